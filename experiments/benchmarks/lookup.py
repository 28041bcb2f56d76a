"""Lookup throughput and peak memory of DKVB inference and value training, and how they scale.

Every setting runs in a fresh subprocess, so its peak process memory (VmHWM) is its own. A
setting builds a synthetic DKVB model (random keys: the lookup cost does not depend on their
values) and times:

* ``infer``: logits of a batch of embeddings (``model.apply``: projection, lookup, vote decoder);
* ``train``: one epoch of value training from precomputed codes (the training library's jitted
  epoch, a gather + scatter per step), reported per embedding.

The paper setting is embed 512, batch 256, 256 codebooks x 4096 keys, key dim 14, 10 classes,
top-1. The scaling sweep varies one of batch, codebooks, keys and embedding dim around it.

    python experiments/benchmarks/lookup.py                   # paper setting + scaling sweep
    python experiments/benchmarks/lookup.py --quick           # paper setting only
    python experiments/benchmarks/lookup.py --methods blocked dense --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PAPER = {"batch": 256, "codebooks": 256, "keys": 4096, "embed": 512}
SWEEP = {
    "batch": [64, 256, 1024, 4096],
    "codebooks": [64, 128, 256],
    "keys": [1024, 2048, 4096],
    "embed": [128, 512, 2048],
}


def worker(args: argparse.Namespace) -> dict:
    """One setting, in its own process: prints one JSON line."""
    import jax
    import jax.numpy as jnp
    import optax
    from _common import peak_rss_mib, time_call

    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.model import DKVB
    from dkvb_jax.training import values as values_lib

    cfg = DKVBConfig(
        embed_dim=args.embed,
        num_classes=10,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
        key_dim=14,
        lookup_chunk=args.chunk,
        lookup_memory_mb=args.memory_mb,
    )
    model = DKVB(cfg)
    x = jax.random.normal(jax.random.key(0), (args.batch, args.embed))
    variables = jax.jit(model.init)(jax.random.key(1), x[:2])
    rss_model = peak_rss_mib()
    out = {"mode": args.mode, "method": args.method, **{k: getattr(args, k) for k in PAPER}}
    if args.mode == "infer":
        fn = jax.jit(_infer_fn(model, cfg, args.method))
        t = time_call(fn, variables, x, repeats=args.repeats)
        items = args.batch
    else:
        n = args.batch * args.steps
        idx = jax.random.randint(jax.random.key(2), (n, args.codebooks, 1), 0, args.keys)
        codes = (idx.astype(jnp.int32), jnp.ones(idx.shape, bool))
        y = jax.random.randint(jax.random.key(3), (n,), 0, 10)
        tx = optax.sgd(0.3)
        opt_state = tx.init(variables["params"])

        spec = values_lib.EpochSpec(model, True, tx, args.batch, 0.1)

        def epoch(v, s, codes, y):
            return values_lib._train_epoch(spec, v, s, codes, y, jax.random.key(4))

        t = time_call(epoch, variables, opt_state, codes, y, repeats=args.repeats)
        items = n
    out.update(
        emb_per_s=items / t.best_wall_s,
        emb_per_cpu_s=items / t.best_cpu_s,
        compile_s=t.compile_s,
        best_wall_s=t.best_wall_s,
        median_wall_s=t.median_wall_s,
        best_cpu_s=t.best_cpu_s,
        repeats=t.repeats,
        loadavg=t.loadavg,
        rss_after_init_mib=rss_model,
        peak_rss_mib=peak_rss_mib(),
    )
    return out


def _infer_fn(model, cfg, method):
    """Logits of a batch, with the lookup forced to `method` (``auto`` = the library default)."""
    import jax

    from dkvb_jax.model import DKVB, lookup

    if method == "auto":
        return lambda v, x: model.apply(v, x)

    def logits(v, x):
        queries = model.apply(v, x, method=DKVB.queries)
        res = lookup.nearest_keys(
            queries,
            v["frozen"]["keys"],
            v["mask"]["search"],
            top_k=cfg.top_k,
            chunk=cfg.lookup_chunk,
            memory_mb=cfg.lookup_memory_mb,
            method=method,
        )
        return model.apply(v, res.indices, res.valid, method=DKVB.decode_codes)

    return jax.jit(logits)


def _settings(args) -> list[dict]:
    base = dict(PAPER)
    out = [dict(base, mode="infer", method=m) for m in args.methods]
    out.append(dict(base, mode="train", method="auto"))
    if not args.quick:
        for name, values in SWEEP.items():
            for v in values:
                if v != base[name]:
                    out.append(dict(base, mode="infer", method=args.methods[0], **{name: v}))
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in SWEEP:
        pts = sorted(
            (r[name], r)
            for r in rows
            if r["mode"] == "infer"
            and all(r[k] == PAPER[k] for k in PAPER if k != name)
            and r["method"] == rows[0]["method"]
        )
        if len(pts) < 2:
            continue
        xs = [p[0] / PAPER[name] for p in pts]
        axes[0].loglog(xs, [p[1]["emb_per_s"] for p in pts], "o-", label=name)
        axes[1].loglog(xs, [p[1]["peak_rss_mib"] for p in pts], "o-", label=name)
    axes[0].set(xlabel="value / paper value", ylabel="embeddings per second", title="throughput")
    axes[1].set(xlabel="value / paper value", ylabel="peak process memory (MiB)", title="memory")
    axes[1].axhline(1024, color="grey", ls="--", lw=0.8)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # --quick has no sweep to label
            ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    from dkvb_jax.config import LOOKUP_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="paper setting only, no sweep")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["auto"],
        choices=LOOKUP_METHODS,
        help="lookup methods at the paper setting (the sweep uses the first)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after compiling")
    parser.add_argument("--steps", type=int, default=16, help="training steps per timed epoch")
    parser.add_argument("--memory-mb", type=float, default=64.0, help="lookup chunk budget")
    parser.add_argument("--chunk", type=int, default=None, help="rows per chunk (default: auto)")
    parser.add_argument("--out", default=None, help="JSON path (default results/lookup.json)")
    parser.add_argument("--plot", default=None, help="PNG path (default next to the JSON)")
    # Internal: one setting in this process.
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="infer", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="auto", help=argparse.SUPPRESS)
    for k, v in PAPER.items():
        parser.add_argument(f"--{k}", type=int, default=v, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.single:
        print(json.dumps(worker(args)))
        return

    from _common import print_table, run_isolated, write_json

    rows = []
    for s in _settings(args):
        flags = ["--single", "--repeats", str(args.repeats), "--steps", str(args.steps)]
        flags += ["--memory-mb", str(args.memory_mb)]
        if args.chunk is not None:
            flags += ["--chunk", str(args.chunk)]
        for k, v in s.items():
            flags += [f"--{k}", str(v)]
        row = run_isolated(Path(__file__), flags)
        rows.append(row)
        print(
            f"{row['mode']:5s} {row['method']:7s} b={row['batch']} C={row['codebooks']} "
            f"K={row['keys']} D={row['embed']}: {row['emb_per_s']:.0f} emb/s "
            f"({row['emb_per_cpu_s']:.0f} per CPU-s), peak {row['peak_rss_mib']:.0f} MiB, "
            f"load {row['loadavg']}",
            flush=True,
        )
    table = [
        {
            "mode": r["mode"],
            "method": r["method"],
            "batch": r["batch"],
            "codebooks": r["codebooks"],
            "keys": r["keys"],
            "embed": r["embed"],
            "emb/s": r["emb_per_s"],
            "emb/CPU-s": r["emb_per_cpu_s"],
            "compile s": r["compile_s"],
            "peak MiB": r["peak_rss_mib"],
            "load(1m)": r["loadavg"][0],
        }
        for r in rows
    ]
    print_table(table, "DKVB lookup (best of repeats; emb/CPU-s is load-insensitive)")
    path = write_json("lookup", {"rows": rows, "args": vars(args)}, args.out)
    plot = Path(args.plot) if args.plot else path.with_suffix(".png")
    _plot(rows, plot)
    print(f"wrote {path} and {plot}; load average now {os.getloadavg()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
