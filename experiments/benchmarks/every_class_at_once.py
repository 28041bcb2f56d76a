"""Every class's forgetting at full ImageNet size, all classes at once, measured.

On the model of an ``imagenet_scale.py --cache DIR`` run (its keys, codes, validation ranking
and queries; statistics and values rebuilt from them), this forgets each class alone with UvA
and evaluates it on every validation row with
:func:`dkvb_jax.unlearning.all_classes.evaluate_all_classes`, times that (wall and CPU), checks
its counts against the per-class evaluation
(:func:`dkvb_jax.unlearning.stored_eval.evaluate_every_class`) on a sample of classes and, when
given, against an ``imagenet_scale.py`` result's per-class accuracies, and writes the forget /
retain distributions and their histograms:

    python experiments/benchmarks/every_class_at_once.py --cache /tmp/cache/full --n-keys 512 \\
        --compare experiments/benchmarks/results/imagenet_scale/full_48classes.json

It writes ``results/every_class_at_once.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, help="an imagenet_scale.py --cache folder")
    p.add_argument("--n-keys", type=int, default=512, help="UvA N_a (the full run's choice)")
    p.add_argument("--classes", type=int, default=None, help="the first N classes (all)")
    p.add_argument("--rows", type=int, default=16, help="validation rows bounded per step")
    p.add_argument("--check-classes", type=int, default=4, help="checked by the per-class path")
    p.add_argument("--compare", default=None, help="an imagenet_scale.py JSON to agree with")
    p.add_argument("--num-classes", type=int, default=1000, help="as the cached run's --classes")
    p.add_argument("--rows-per-class", type=int, default=None, help="as the cached run's")
    p.add_argument("--val-per-class", type=int, default=50, help="as the cached run's")
    p.add_argument("--out", default=None)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def _accuracies(counts, labels, classes):
    forget_rows = np.bincount(labels, minlength=max(classes) + 1)[classes]
    return counts[:, 0] / forget_rows, counts[:, 1] / (len(labels) - forget_rows)


def _compare(path, counts, labels, classes) -> dict:
    """The classes an imagenet_scale.py result evaluated: the same correct rows (its per-class
    accuracies are rounded, so compared as the counts they round from), or an error."""
    other = json.loads(Path(path).read_text())["per_class"]
    n = min(len(other["forget"]), len(classes))
    forget_rows = np.bincount(labels, minlength=max(classes) + 1)[classes[:n]]
    rows = np.stack([forget_rows, len(labels) - forget_rows], -1)
    theirs = np.rint(np.stack([other["forget"][:n], other["retain"][:n]], -1) * rows)
    if not np.array_equal(theirs, counts[:n]):
        bad = np.flatnonzero((theirs != counts[:n]).any(-1)).tolist()
        raise RuntimeError(f"correct rows differ from {path} for classes {bad}")
    return dict(path=str(path), classes=n, equal=True)


def main(argv=None) -> dict:
    args = _args(argv)
    from _common import peak_rss_mib, write_json
    from _imagenet_report import distribution, plot
    from class_group_bounds import _load_store

    from dkvb_jax.unlearning import all_classes, stored_eval

    store, data = _load_store(args)
    labels = np.asarray(store.labels)
    classes = list(range(data.num_classes if args.classes is None else args.classes))
    wall, cpu = time.perf_counter(), time.process_time()
    counts, sizes = all_classes.evaluate_all_classes(store, classes, args.n_keys, rows=args.rows)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"every class at once: {len(classes)} classes in {wall:.1f} s ({cpu:.1f} CPU-s)")

    # The per-class evaluation of a sample, spread over the classes, must agree exactly.
    sample = classes[:: max(1, len(classes) // max(1, args.check_classes))][: args.check_classes]
    want, _, _ = stored_eval.evaluate_every_class(store, sample, args.n_keys)
    if not np.array_equal(want, counts[[classes.index(c) for c in sample]]):
        raise RuntimeError(f"the per-class evaluation disagrees on classes {sample}")
    forget, retain = _accuracies(counts, labels, classes)
    m = len(labels)
    payload = dict(
        n_keys=args.n_keys,
        classes_evaluated=len(classes),
        val_rows=m,
        every_class_eval_s=round(wall, 2),
        every_class_eval_cpu_s=round(cpu, 2),
        per_class_s=wall / len(classes),
        forget=distribution(forget),
        retain=distribution(retain),
        sizes=dict(
            masked_pairs_mean=float(sizes.pairs.mean()),
            past_first_fallback_mean=float(sizes.deeper.mean()),
            beyond_ranking_mean=float(sizes.beyond.mean()),
            undecided_cases_mean=float(sizes.undecided.mean()),
            undecided_share=float(sizes.undecided.sum() / (m * len(classes))),
        ),
        checked_by_per_class=[int(c) for c in sample],
        compared=None if args.compare is None else _compare(args.compare, counts, labels, classes),
        per_class=dict(forget=forget.tolist(), retain=retain.tolist()),
        peak_rss_mib=round(peak_rss_mib(), 1),
    )
    path = write_json("every_class_at_once", payload, args.out)
    if not args.no_plot:
        title = f"UvA N_a={args.n_keys}, each of {len(classes)} classes forgotten alone"
        plot(path.with_suffix(".png"), forget, retain, title)
    print(
        f"forget mean {forget.mean():.1%} worst {forget.max():.1%}; retain mean "
        f"{retain.mean():.1%} worst {retain.min():.1%}; undecided "
        f"{payload['sizes']['undecided_share']:.1%} of (row, class) cases; wrote {path}"
    )
    return payload


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
