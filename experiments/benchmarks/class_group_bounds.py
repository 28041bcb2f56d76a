"""How far class-group bounds would cut the every-class evaluation's full-logit work.

The every-class evaluation (``imagenet_scale.py``) gives full `[classes]` logits to the rows its
global bound leaves undecided; their value gathers set its time. A finer, still exact bound
splits the classes in contiguous groups of `width` (the synthetic set's superclasses are
contiguous tens), keeps per key each group's largest and smallest value, and bounds every class
of group `g` by `its base logit + sum over the row's changed pairs of (top[new, g] - floor[old,
g])` (at least zero per pair where a class of the group never varies). A group below the label's
exact new logit cannot win, so a row needs the exact values of the surviving groups only.

This measures, on the full-size model of an ``imagenet_scale.py --cache DIR`` run, how many
groups survive per undecided row, and what share of the undecided rows' masked pairs belong to
rows left with more than a few groups (those would still need the full gathers):

    python experiments/benchmarks/class_group_bounds.py --cache DIR --n-keys 512

It writes ``results/class_group_bounds.json``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import numpy as np


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, help="an imagenet_scale.py --cache folder")
    p.add_argument("--n-keys", type=int, default=512, help="UvA N_a (the full run's choice)")
    p.add_argument("--classes", default="0,137,500,999", help="forgotten classes, comma-separated")
    p.add_argument("--widths", default="10,20,50", help="group widths, comma-separated")
    p.add_argument("--slots", type=int, default=4, help="groups a row may keep off the dense path")
    p.add_argument("--num-classes", type=int, default=1000, help="as the cached run's --classes")
    p.add_argument("--rows-per-class", type=int, default=None, help="as the cached run's")
    p.add_argument("--val-per-class", type=int, default=50, help="as the cached run's")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def _load_store(args):
    """The full run's evaluation store, rebuilt from an imagenet_scale.py cache."""
    from dkvb_jax.data import synthetic_imagenet as si
    from dkvb_jax.exact import pair_counts
    from dkvb_jax.unlearning import stored_eval as se

    cache = Path(args.cache)
    load = {k: np.load(cache / f"{k}.npy") for k in ("train_codes", "val_codes", "val_ranked")}
    data = si.SyntheticImageNetConfig(  # as imagenet_scale.py makes it
        num_classes=args.num_classes,
        num_superclasses=max(1, args.num_classes // 10),
        rows_per_class=args.rows_per_class,
        val_per_class=args.val_per_class,
    )
    train_labels, val_labels = si.labels(data, "train"), si.labels(data, "validation")
    if len(train_labels) != len(load["train_codes"]):
        raise SystemExit(f"{cache} was made with other --classes / --rows-per-class settings")
    keys = np.load(cache / "keys.npy")
    stats = pair_counts.count_pairs(
        load.pop("train_codes"),
        np.asarray(train_labels),
        num_keys=keys.shape[1],
        num_classes=data.num_classes,
    )
    store = se.build(
        stats,
        None,
        load["val_codes"],
        load["val_ranked"],
        np.load(cache / "val_queries.npy"),
        keys,
        np.asarray(val_labels),
    )
    store = se.with_values(store, pair_counts.derive_fixed_point_values(stats, progress=False))
    del load
    return store, data


def main(argv=None) -> dict:
    args = _args(argv)
    import jax
    import jax.numpy as jnp
    from _common import write_json

    from dkvb_jax.unlearning import stored_eval as se
    from dkvb_jax.unlearning.compaction import compact

    store, data = _load_store(args)
    m, cb = store.codes.shape[1:]
    caps = se.make_caps(min(m * cb, 2**22), 4096, m, min(m * cb, 2**22))
    n, slots = args.n_keys, args.slots

    imin = jnp.iinfo(jnp.int32).min

    @jax.jit
    def undecided(store, label):
        """The rows the global bound leaves undecided, the label's exact new logit, the pairs."""
        sel = se.uva_selection(store, label, n)
        d = se.decide(store, sel, caps)
        und = d.affected & ~d.right & ~d.wrong
        # The exact logits of the undecided rows, as the evaluation computes them, to check
        # that the group bounds never drop a class that reaches the label.
        put, _ = compact(und, caps.rows)

        def others(store, rows, logits):  # the label's logit out of the way
            return logits.at[jnp.arange(rows.shape[0]), store.labels[rows]].set(imin)

        logits, _ = se.undecided_logits(store, d.pairs, put, caps, reduce=others)
        return und, d.ly, [a[0] for a in d.pairs], (put, logits)

    @functools.partial(jax.jit, static_argnums=1)
    def survivors(store, width, und, ly, pairs, exact):
        """int32 `[M]` surviving groups and candidate classes of each row, and its pairs."""
        m, classes = store.base.shape
        grouped = lambda a: a.reshape(*a.shape[:-1], classes // width, width)  # noqa: E731
        imax = jnp.iinfo(jnp.int32).max

        def tables(v):  # one codebook [K, classes]: no temporary of the whole table
            varies = (v != v[:1]).any(0)
            top = grouped(jnp.where(varies, v, imin)).max(-1)
            floor = grouped(jnp.where(varies, v, imax)).min(-1)
            none = top == imin  # no varying class: the group never moves
            return jnp.where(none, 0, top), jnp.where(none, 0, floor), grouped(~varies).any(-1)

        top, floor, constant = jax.lax.map(tables, store.values[0])
        r, b, old, new, live = pairs

        def add(acc, chunk):
            r, b, old, new, live = chunk
            d = top[b, new] - floor[b, old]
            d = jnp.where(constant[b], jnp.maximum(d, 0), d)
            return acc.at[r].add(jnp.where(live[:, None], d, 0)), None

        step = min(r.shape[0], 2**16)  # caps are powers of two
        chunks = tuple(a.reshape(-1, step) for a in (r, b, old, new, live))
        bound = jax.lax.scan(add, jnp.zeros((m, classes // width), jnp.int32), chunks)[0]
        others = store.base.at[jnp.arange(m), store.labels].set(imin)
        alive = (grouped(others).max(-1) + bound >= ly[:, None]) & und[:, None]
        cand = (grouped(others) + bound[..., None] >= ly[:, None, None]) & und[:, None, None]
        row_pairs = jax.ops.segment_sum(live.astype(jnp.int32), r, m)
        put, logits = exact
        reach = grouped(logits).max(-1) >= ly.at[put].get(mode="fill", fill_value=imax)[:, None]
        unsound = (reach & ~alive.at[put].get(mode="fill", fill_value=True)).sum()
        return alive.sum(-1), cand.sum((1, 2)), row_pairs, unsound

    rows = []
    for c in [int(x) for x in args.classes.split(",")]:
        und, ly, pairs, exact = undecided(store, jnp.int32(c))
        for width in [int(w) for w in args.widths.split(",")]:
            if data.num_classes % width:
                raise SystemExit(f"--widths: {width} does not divide {data.num_classes} classes")
            groups, cand, row_pairs, unsound = survivors(store, width, und, ly, pairs, exact)
            if int(unsound):  # a bug, never a measurement: stop rather than report it
                raise RuntimeError(f"class {c}, width {width}: {int(unsound)} groups dropped")
            keep = np.asarray(und)
            g, k, p = (np.asarray(a)[keep] for a in (groups, cand, row_pairs))
            rows.append(
                dict(
                    forgotten_class=c,
                    width=width,
                    undecided_rows=int(keep.sum()),
                    undecided_pairs=int(p.sum()),
                    decided_by_groups=float((g == 0).mean()),
                    rows_within_slots=float(((g > 0) & (g <= slots)).mean()),
                    rows_beyond_slots=float((g > slots).mean()),
                    pairs_beyond_slots=float(p[g > slots].sum() / p.sum()),
                    groups_mean=float(g.mean()),
                    candidate_classes_p50_p90=np.percentile(k, [50, 90]).tolist(),
                )
            )
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()})
    path = write_json("class_group_bounds", dict(n_keys=n, slots=slots, rows=rows), args.out)
    print(f"wrote {path}")
    return dict(rows=rows)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
