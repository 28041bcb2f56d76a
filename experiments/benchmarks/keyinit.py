"""Key initialisation (EMA k-means) throughput: one jitted EMA step, compile apart from run.

Times the library's jitted EMA k-means step (`dkvb_jax.training.keys._ema_step`: nearest-key
assignment, per-key counts and sums, EMA update, dead-key re-seeding) on random queries, and one
whole `fit_keys` epoch over `--examples` embeddings (projection included). Reports embeddings per
second, per CPU-second, compile time and peak process memory.

    python experiments/benchmarks/keyinit.py
    python experiments/benchmarks/keyinit.py --codebooks 64 --keys 1024 --examples 2048
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--codebooks", type=int, default=256)
    parser.add_argument("--keys", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--examples", type=int, default=2048, help="embeddings in the epoch run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default results/keyinit.json)")
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    from _common import peak_rss_mib, print_table, time_call, write_json

    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.model import DKVB
    from dkvb_jax.training import keys as keys_lib

    cfg = DKVBConfig(
        embed_dim=args.embed,
        num_classes=10,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
        key_dim=14,
    )
    model = DKVB(cfg)
    x = np.asarray(jax.random.normal(jax.random.key(0), (args.examples, args.embed)))
    variables = jax.jit(model.init)(jax.random.key(1), x[:2])
    queries = jax.jit(lambda v, x: model.apply(v, x, method=DKVB.queries))(
        variables, x[: args.batch]
    )
    keys = variables["frozen"]["keys"]
    counts = jax.numpy.ones(keys.shape[:2])
    state = keys_lib.EMAState(keys=keys, sums=keys, counts=counts)
    w = jax.numpy.ones((args.batch,))

    def step(state, q, w):
        return keys_lib._ema_step(state, q, w, jax.random.key(2), 0.95, 1e-5, 1e-3)

    t_step = time_call(step, state, queries, w, repeats=args.repeats)
    rows = [
        {
            "what": "EMA step",
            "batch": args.batch,
            "emb/s": args.batch / t_step.best_wall_s,
            "emb/CPU-s": args.batch / t_step.best_cpu_s,
            "compile s": t_step.compile_s,
            "best s": t_step.best_wall_s,
            "load(1m)": t_step.loadavg[0],
        }
    ]

    import time

    config = keys_lib.KeyInitConfig(epochs=1, batch_size=args.batch)
    t0, c0 = time.perf_counter(), time.process_time()
    keys_lib.fit_keys(model, variables, x, key=jax.random.key(3), config=config, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows.append(
        {
            "what": "fit_keys, 1 epoch (incl. compile)",
            "batch": args.batch,
            "emb/s": args.examples / wall,
            "emb/CPU-s": args.examples / cpu,
            "compile s": float("nan"),
            "best s": wall,
            "load(1m)": os.getloadavg()[0],
        }
    )
    print_table(rows, f"EMA k-means key init: C={args.codebooks} K={args.keys} D={args.embed}")
    path = write_json(
        "keyinit",
        {"args": vars(args), "rows": rows, "step": vars(t_step), "peak_rss_mib": peak_rss_mib()},
        args.out,
    )
    print(f"peak RSS {peak_rss_mib():.0f} MiB; wrote {path}")


if __name__ == "__main__":
    main()
