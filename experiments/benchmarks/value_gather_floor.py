"""What one changed (row, codebook) pair costs the every-class evaluation's dense path.

A row the integer bounds leave undecided gets its full logits: for each of its masked pairs
the evaluation gathers the old and the new key's `[classes]` value rows and adds their
difference to the row's logits (`_stored_blocks.block_delta`). At ImageNet size the value table
is `[256, 4096, 1000]` int32 (4.2 GB), so each pair reads two 4 KB rows from anywhere in it.
This times, on random pairs over a table of that shape, alternately (A B A B):

- ``delta``: the library's dense path itself (gathers, difference, scatter-add into the rows);
- ``gathers``: the two row gathers alone (summed, so nothing is written per row): the floor
  set by memory traffic, whatever the arithmetic around it;
- ``coarse_uint8``: the dense path over a uint8 copy of the table, each key's row decoded as
  `offset + (q << shift)` (4x fewer bytes): what a coarse, still exact bounding pass before
  the dense one would cost per pair at least (decoding and scatter-add included).

and prints (and writes to ``results/value_gather_floor.json``) nanoseconds per pair, wall and
CPU, and, for the per-class pair count of a result JSON (``undecided_pairs_mean``), the seconds
per class and for 1000 classes that each implies.

    python experiments/benchmarks/value_gather_floor.py \
        --json experiments/benchmarks/results/imagenet_scale/full_48classes.json
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
    p.add_argument("--codebooks", type=int, default=256)
    p.add_argument("--keys", type=int, default=4096)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--pairs", type=int, default=262_144, help="random pairs timed per repeat")
    p.add_argument("--rows", type=int, default=8192, help="undecided rows they belong to")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="an imagenet_scale result: its pairs per class")
    p.add_argument(
        "--out", default=None, help="JSON path (default results/value_gather_floor.json)"
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = _args(argv)
    import jax
    import jax.numpy as jnp

    from dkvb_jax.unlearning import _stored_blocks as kernels
    from dkvb_jax.unlearning import stored_eval

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import write_json

    c, k, y, n, m = args.codebooks, args.keys, args.classes, args.pairs, args.rows
    rng = np.random.default_rng(0)
    values = jnp.asarray(rng.integers(-(2**22), 0, (c, k, y), dtype=np.int32))
    step = min(n, stored_eval.DELTA_CHUNK)
    r = jnp.asarray(np.sort(rng.integers(0, m, n)), jnp.int32)  # row by row, as compacted
    b, old, new = (jnp.asarray(rng.integers(0, hi, n), jnp.int32) for hi in (c, k, k))
    live = jnp.ones(n, bool)
    slot = jnp.arange(m, dtype=jnp.int32)
    caps = stored_eval.make_caps(n, 1, m, n, row_chunk=m)  # every row in one chunk

    @jax.jit
    def delta(values, r, b, old, new):
        pairs = kernels.block_row_pairs(r, b, old, new, live, slot, caps)[1][0]
        return kernels.block_delta(*pairs, values, jnp.int32(0), caps)

    @jax.jit
    def gathers(values, r, b, old, new):
        def add(acc, chunk):
            cb, o, w = chunk
            return acc + (values[cb, w] - values[cb, o]).sum(0), None

        chunks = tuple(a.reshape(-1, step) for a in (b, old, new))
        return jax.lax.scan(add, jnp.zeros(y, jnp.int32), chunks)[0]

    coarse = jnp.asarray(rng.integers(0, 256, (c, k, y), dtype=np.uint8))
    shift = jnp.asarray(rng.integers(10, 13, (c, k)), jnp.int32)
    offset = jnp.asarray(rng.integers(-(2**22), 0, (c, k)), jnp.int32)

    @jax.jit
    def coarse_uint8(values, r, b, old, new):
        del values  # the uint8 copy instead

        def add(acc, chunk):
            cb, o, w, to = chunk
            decoded = [
                (coarse[cb, i].astype(jnp.int32) << shift[cb, i][:, None]) + offset[cb, i][:, None]
                for i in (w, o)
            ]
            return acc.at[to].add(decoded[0] - decoded[1], mode="drop"), None

        chunks = tuple(a.reshape(-1, step) for a in (b, old, new, r))
        return jax.lax.scan(add, jnp.zeros((m, y), jnp.int32), chunks)[0]

    fns = dict(delta=delta, gathers=gathers, coarse_uint8=coarse_uint8)
    # Compiles all three before timing; the first two sum the same differences (int32 wraps
    # alike), so they must agree.
    total = delta(values, r, b, old, new).sum(0)
    if not bool((total == gathers(values, r, b, old, new)).all()):
        raise AssertionError("the dense path's row deltas do not sum to the gathered differences")
    coarse_uint8(values, r, b, old, new).block_until_ready()
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, f in fns.items():
            t, cpu = time.perf_counter(), time.process_time()
            f(values, r, b, old, new).block_until_ready()
            times[name].append((time.perf_counter() - t, time.process_time() - cpu))
    per_class = None
    if args.json:
        per_class = json.loads(Path(args.json).read_text())["uva"].get("undecided_pairs_mean")
    result = dict(table_shape=[c, k, y], pairs=n, rows=m, undecided_pairs_per_class=per_class)
    for name, runs in times.items():
        wall = float(np.median([w for w, _ in runs]))
        cpu = float(np.median([u for _, u in runs]))
        entry = dict(ns_per_pair=wall / n * 1e9, cpu_ns_per_pair=cpu / n * 1e9)
        if per_class:
            entry["s_per_class"] = entry["ns_per_pair"] * per_class / 1e9
            entry["min_for_1000_classes"] = entry["s_per_class"] * 1000 / 60
        result[name] = entry
        line = ", ".join(f"{k_}={v:,.1f}" for k_, v in entry.items())
        repeats = [tuple(round(x, 3) for x in t) for t in runs]
        print(f"{name:12s} {line}  (wall, CPU-s per repeat: {repeats})")
    write_json("value_gather_floor", result, args.out)
    return result


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
