"""Would a dense evaluation of all classes at once bring the every-class evaluation under 15 min?

The every-class evaluation (``imagenet_scale.py``) forgets each class alone and gathers two
`[classes]` value rows per masked (row, codebook) pair: 2.33 M pairs per class at full size,
2.3 s per class. Summed over the classes instead, one row's logit changes under every class's
mask at once telescope along its stored ranking `k_0, k_1, ...` (nearest first):

    D[y, j] = sum_c sum_{l >= 1} [class y masks k_0..k_{l-1} of codebook c]
                                 * (values[c, k_l, j] - values[c, k_{l-1}, j])

so level `l = 1` is one dense product per row, `[classes, C] @ [C, classes]`, exact in float32
when the int32 differences are split in two 16-bit halves (a sum of 256 halves stays below
2^24), while the deeper levels hold only the pairs whose first fallback is masked too and would
stay pair gathers as today. This measures, on the model of an ``imagenet_scale.py --cache DIR``
run:

- how deep the fallbacks go: the share of (row, codebook) pairs whose first `l` stored keys a
  class masks, for l = 1 .. depth, over a sample of classes;
- the dense level-1 step at full shape (every class's mask, a batch of rows, their new logits'
  argmax), checked bit for bit against an int64 NumPy product and timed, wall and CPU;

and prints what a hybrid (dense level 1, level >= 2 pairs gathered at the measured cost per pair
of ``value_gather_floor.py``) would take for all classes:

    python experiments/benchmarks/dense_levels.py --cache DIR --n-keys 512

It writes ``results/dense_levels.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, help="an imagenet_scale.py --cache folder")
    p.add_argument("--n-keys", type=int, default=512, help="UvA N_a (the full run's choice)")
    p.add_argument("--classes", default="0,137,500,999", help="sampled for the depths")
    p.add_argument("--rows", type=int, default=16, help="rows per dense step")
    p.add_argument("--check-rows", type=int, default=2, help="rows checked against NumPy")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument(
        "--gather-ns",
        type=float,
        default=None,
        help="ns per gathered pair (default: the delta path of results/value_gather_floor.json)",
    )
    p.add_argument("--num-classes", type=int, default=1000, help="as the cached run's --classes")
    p.add_argument("--rows-per-class", type=int, default=None, help="as the cached run's")
    p.add_argument("--val-per-class", type=int, default=50, help="as the cached run's")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def _gather_ns(args) -> float:
    if args.gather_ns is not None:
        return args.gather_ns
    from _common import RESULTS_DIR

    floor = json.loads((RESULTS_DIR / "value_gather_floor.json").read_text())
    return float(floor["delta"]["ns_per_pair"])


def _split_product(hit, diff, kind: str):
    """int32 `[B, classes, classes]`: `sum_c hit[b, c, y] * diff[b, c, j]`, exact, from float
    products of small integer digits of `diff` (int32 `[B, C, classes]`, |diff| < 2^23): float32
    on 16-bit halves (a sum of 256 halves stays below 2^24), or bfloat16 on signed 8-bit digits
    (exact in bfloat16, summed in float32). The digits' sums recombine with int32 wrap-around,
    like the sum they equal."""
    import jax
    import jax.numpy as jnp

    if kind == "f32":
        digits, dtype, bits = [diff & 0xFFFF, diff >> 16], jnp.float32, 16
    else:
        low = ((diff + 128) & 255) - 128
        rest = (diff - low) >> 8
        mid = ((rest + 128) & 255) - 128
        digits, dtype, bits = [low, mid, (rest - mid) >> 8], jnp.bfloat16, 8
    out = 0
    for i, d in enumerate(digits):
        part = jnp.einsum(
            "bcy,bcj->byj",
            hit.astype(dtype),
            d.astype(dtype),
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=jnp.float32,
        )
        out = out + (part.astype(jnp.int32) << (bits * i))
    return out


def main(argv=None) -> dict:
    args = _args(argv)
    import jax
    import jax.numpy as jnp
    from _common import time_call, write_json
    from class_group_bounds import _load_store

    from dkvb_jax.unlearning import stored_eval as se

    store, data = _load_store(args)
    classes = data.num_classes
    m, cb = store.codes.shape[1:]
    depth = store.ranked.shape[-1]
    select = jax.jit(se.uva_selection, static_argnums=2)

    @jax.jit
    def levels(sel):
        """int32 `[depth]`: pairs whose first l + 1 stored keys `sel` masks."""
        masked = sel[0][jnp.arange(cb)[None, :, None], store.ranked[0]]  # [M, C, depth]
        return jnp.cumprod(masked.astype(jnp.int32), axis=-1).sum((0, 1))

    depths, caps = [], None
    for c in [int(x) for x in args.classes.split(",")]:
        sel = select(store, jnp.int32(c), args.n_keys)
        counts = np.asarray(levels(sel), np.int64)
        # The evaluation's own counts: every masked pair, and those past the stored ranking.
        _, sizes, caps = se.evaluate(store, sel, caps)
        if (counts[0], counts[-1]) != (int(sizes.pairs), int(sizes.exact)):
            raise RuntimeError(f"class {c}: depths {counts} disagree with the evaluation's {sizes}")
        depths.append(counts)
        print(f"class {c}: pairs masked to depth l = 1..{depth}:", counts.tolist())
    depths = np.array(depths)

    # Every class's mask, key-major: [C, K, classes] bool (1 GB at full size).
    masks = jax.lax.map(lambda y: select(store, y, args.n_keys)[0], jnp.arange(classes))
    by_key = jnp.transpose(masks, (1, 2, 0))
    del masks

    @functools.partial(jax.jit, static_argnums=0)
    def level_one(kind, by_key, values, codes, ranked, base, labels):
        """bool `[B, classes]`: row b right with class y forgotten (level-1 fallbacks only),
        and the int32 `[B, classes, classes]` logit changes."""
        c = jnp.arange(cb)[None]
        hit = by_key[c, codes]  # [B, C, classes]
        diff = values[c, ranked[..., 1].astype(jnp.int32)] - values[c, codes]  # int32
        logits = base[:, None, :] + _split_product(hit, diff, kind)
        return logits.argmax(-1) == labels[:, None], logits - base[:, None, :]

    b = args.rows
    batch = (by_key, store.values[0], store.codes[0, :b], store.ranked[0, :b])
    batch += (store.base[:b], store.labels[:b])
    kinds = ("f32", "bf16")
    timings = {}
    for _ in range(2):  # A B A B: the best of each
        for kind in kinds:
            t = time_call(functools.partial(level_one, kind), *batch, repeats=args.repeats)
            if kind not in timings or t.best_wall_s < timings[kind].best_wall_s:
                timings[kind] = t
    values = np.asarray(store.values[0])
    rows = np.arange(args.check_rows)
    hits = np.asarray(by_key[jnp.arange(cb)[None], store.codes[0, rows]]).astype(np.int64)
    for kind in kinds:
        _, change = level_one(kind, *batch)
        for r in rows:
            k0 = np.asarray(store.codes[0, r])
            k1 = np.asarray(store.ranked[0, r, :, 1]).astype(np.int64)
            diff = values[np.arange(cb), k1].astype(np.int64) - values[np.arange(cb), k0]
            want = (hits[r].T @ diff).astype(np.int32)  # the int32 sums the model makes
            if not np.array_equal(np.asarray(change[r]), want):
                raise RuntimeError(f"row {r}: the {kind} digit products are not the exact sum")

    # Past level 1 each pair needs one correction, values[k_F] - values[k_1] at its first
    # unmasked key k_F: one two-row gather, as a masked pair costs the evaluation today.
    deeper = float(depths[:, 1].mean())
    ns = _gather_ns(args)
    gather_s = deeper * classes * ns * 1e-9
    dense = {
        kind: dict(
            step_wall_s=t.best_wall_s,
            step_cpu_s=t.best_cpu_s,
            loadavg=t.loadavg,
            all_rows_wall_s=t.best_wall_s / b * m,
            all_rows_cpu_s=t.best_cpu_s / b * m,
            hybrid_projection_s=t.best_wall_s / b * m + gather_s,
        )
        for kind, t in timings.items()
    }
    payload = dict(
        n_keys=args.n_keys,
        sampled_classes=[int(x) for x in args.classes.split(",")],
        pairs_to_depth=depths.tolist(),
        level_one_pairs_mean=float(depths[:, 0].mean()),
        deeper_pairs_mean=deeper,
        deeper_share=deeper / float(depths[:, 0].mean()),
        rows_per_step=b,
        checked_rows=args.check_rows,
        dense_level_one=dense,
        gather_ns_per_pair=ns,
        deeper_gathers_all_classes_s=gather_s,
    )
    for kind, d in dense.items():
        print(
            f"level 1 dense ({kind} digits), all {classes} classes x {m:,} rows: "
            f"{d['all_rows_wall_s']:.0f} s wall ({d['all_rows_cpu_s']:.0f} CPU-s; {b} rows per "
            f"step, exact on {args.check_rows} rows); hybrid about "
            f"{d['hybrid_projection_s'] / 60:.1f} min (a projection, not a run)"
        )
    print(
        f"past level 1: {deeper:,.0f} pairs per class ({payload['deeper_share']:.1%} of the "
        f"masked), {gather_s:.0f} s for all classes at {ns:.0f} ns per pair"
    )
    path = write_json("dense_levels", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
