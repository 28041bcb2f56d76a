"""ImageNet scale: the paper's DKVB on 1000 classes and 1.28 M rows, on one host or a mesh.

Synthetic ImageNet-shaped CLIP-width embeddings (:mod:`dkvb_jax.data.synthetic_imagenet`,
streamed in chunks), the paper's model (256 codebooks x 4096 keys, key dim 14, top-1, vote
decoder, value dim 1000) and the whole pipeline:

1. keys by EMA k-means on an unlabelled subset (``--key-rows``, ``--key-epochs``);
2. codes of every train row (int16), one pass; the linear probe trains on the same pass;
3. one :class:`~dkvb_jax.exact.pair_counts.PairClassCounts` (sparse, uint16) serving UvA's
   per-class histogram and the exact label counts; values derived from it in closed form (the
   certified recipe; the paper's value training is plain SGD, whose optimiser state is empty,
   but it is not run here: a dense [256, 4096, 1000] gradient per step costs hours at this size);
4. validation rows: codes, their ``--depth`` nearest keys and queries, stored once;
5. N_a chosen as the paper does (the smallest of a doubling grid that drives the forget accuracy
   of the best-learned classes to ``--target``), forgetting one class (UvA from the stored statistics; warm median), every class forgotten
   alone and evaluated on all validation rows (only masked pairs get a new lookup), UvE on a
   sample of classes, the exact removal of a random 1% of train rows (checked bit for bit
   against a recount), and the retrain oracle (values refitted without the class) on a sample.

    python experiments/benchmarks/imagenet_scale.py --quick        # 1000 classes x 100 rows, 10 val
    python experiments/benchmarks/imagenet_scale.py                # 1,281,167 rows
    python experiments/benchmarks/imagenet_scale.py --quick --devices 8   # codebook mesh
    python experiments/benchmarks/imagenet_scale.py --cache DIR --devices 8  # reuse the codes

Prints a summary and writes ``results/imagenet_scale/<name>.json`` and a histogram plot.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="1000 classes x 100 train (10 validation) rows each"
    )
    p.add_argument("--devices", type=int, default=1, help="forced CPU devices (codebook mesh)")
    p.add_argument("--n-keys", type=int, default=None, help="UvA N_a (default: chosen)")
    p.add_argument("--target", type=float, default=0.0, help="forget accuracy N_a must reach")
    p.add_argument("--n-examples", type=int, default=10, help="UvE examples (N_e)")
    p.add_argument("--depth", type=int, default=8, help="nearest keys stored per val row")
    p.add_argument("--key-rows", type=int, default=None, help="unlabelled rows for key init")
    p.add_argument("--key-epochs", type=int, default=None)
    p.add_argument("--probe-epochs", type=int, default=None)
    p.add_argument("--eval-classes", type=int, default=None, help="first N classes (all)")
    p.add_argument("--sample-classes", type=int, default=10, help="UvE sample size")
    p.add_argument("--oracle-classes", type=int, default=3, help="retrain-oracle sample size")
    p.add_argument("--timing-classes", type=int, default=50)
    p.add_argument(
        "--every-class",
        choices=("at-once", "per-class"),
        default="at-once",
        help="evaluate every class's forgetting all at once, row by row (all_classes), or class "
        "by class (stored_eval.evaluate_every_class)",
    )
    p.add_argument("--eval-rows", type=int, default=16, help="rows per step (at-once)")
    p.add_argument("--check-classes", type=int, default=4, help="per-class check (at-once)")
    p.add_argument("--eval-batch", type=int, default=8, help="classes per call (per-class)")
    p.add_argument("--rows-per-class", type=int, default=None, help="override (tests)")
    p.add_argument(
        "--val-per-class", type=int, default=None, help="validation rows per class (50; 10 quick)"
    )
    p.add_argument("--codebooks", type=int, default=256)
    p.add_argument("--keys", type=int, default=4096)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default results/imagenet_scale/)")
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="reuse (or save) the keys, train codes, probe and validation codes in DIR: they do "
        "not depend on --devices, so a second run (e.g. --devices 8) skips the encoding passes",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print a table of results; exit")
    args = p.parse_args(argv)
    quick = args.quick or args.rows_per_class is not None
    defaults = dict(
        key_rows=16384 if quick else 65536,
        key_epochs=2 if quick else 3,
        probe_epochs=10 if quick else 1,  # 100 rows per class: the probe converges by 8-10
        val_per_class=10 if args.quick else 50,
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick and args.rows_per_class is None:
        args.rows_per_class = 100
    return args


ROWS = (
    ("train rows", lambda r: f"{r['train_rows']:,}"),
    ("classes (evaluated)", lambda r: f"{r['classes']} ({r['classes_evaluated']})"),
    ("devices", lambda r: r["devices"]),
    ("peak RSS (ru_maxrss)", lambda r: f"{r['peak_rss_mib'] / 1024:.2f} GiB"),
    ("forget one class (warm median)", lambda r: f"{r['forget_one_class_ms']:.1f} ms"),
    ("every-class evaluation", lambda r: r["uva"].get("every_class", "per-class")),
    (
        "every-class eval, wall (CPU)",
        lambda r: f"{r['every_class_eval_s']:.0f} s ({r['every_class_eval_cpu_s']:.0f} CPU-s)",
    ),
    (
        "per class: masked pairs / affected rows / rows given full logits (mean)",
        lambda r: (
            f"{r['uva']['masked_pairs_mean']:,.0f} / {r['uva']['affected_rows_mean']:,.0f} / "
            f"{r['uva']['undecided_rows_mean']:,.0f}"
        ),
    ),
    (
        "val accuracy (DKVB) / linear probe",
        lambda r: f"{r['val_accuracy']:.1%} / {r['probe_accuracy']:.1%}",
    ),
    ("UvA N_a", lambda r: r["uva"]["n_keys"]),
    (
        "forget acc. mean / worst",
        lambda r: f"{r['uva']['forget']['mean']:.1%} / {r['uva']['worst_forget']:.1%}",
    ),
    (
        "retain acc. mean / worst",
        lambda r: f"{r['uva']['retain']['mean']:.1%} / {r['uva']['retain']['min']:.1%}",
    ),
    (
        "UvE forget / retain (sample)",
        lambda r: f"{r['uve']['forget_mean']:.1%} / {r['uve']['retain_mean']:.1%}",
    ),
    (
        "retrain oracle forget / retain (sample)",
        lambda r: (
            f"{r['retrain_oracle']['forget_mean']:.1%} / {r['retrain_oracle']['retain_mean']:.1%}"
        ),
    ),
    (
        "exact removal of 1%: counts = recount",
        lambda r: (
            f"{r['exact_removal']['counts_bit_identical_to_recount']} "
            f"({r['exact_removal']['remove_s']:.1f} s)"
        ),
    ),
    (
        "statistics (sparse, dense int32)",
        lambda r: (
            f"{r['statistics']['mib']:,.0f} MiB, {r['statistics']['dense_int32_mib']:,.0f} MiB"
        ),
    ),
    ("total wall", lambda r: f"{r['total_s'] / 60:.1f} min"),
)


def report(paths: list[str]) -> str:
    """A markdown table of result files, one column each."""
    import json

    runs = [json.loads(Path(p).read_text()) for p in paths]
    lines = ["| | " + " | ".join(Path(p).stem for p in paths) + " |"]
    lines.append("|---" * (len(runs) + 1) + "|")
    lines += [f"| {name} | " + " | ".join(str(f(r)) for r in runs) + " |" for name, f in ROWS]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = _args(argv)
    if args.report:
        print(report(args.report))
        return {}
    import jax

    if args.devices > 1:
        try:  # only possible before JAX starts (a test may have forced devices already)
            jax.config.update("jax_num_cpu_devices", args.devices)
        except RuntimeError:
            pass
        if jax.device_count() < args.devices:
            raise SystemExit(
                f"--devices {args.devices}: JAX already started with {jax.device_count()} "
                "device(s); run the script in a fresh process."
            )
    from dkvb_jax._malloc import keep_freed_heap

    keep_freed_heap()  # thousands of jitted calls on large buffers: see keep_freed_heap
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _imagenet

    return _imagenet.run(args)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
