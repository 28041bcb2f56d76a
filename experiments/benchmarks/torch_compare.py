"""Side by side with discrete-key-value-bottleneck-pytorch, in the same process invocation.

Runs the PyTorch package's ``DiscreteKeyValueBottleneck`` (frozen keys, CPU, eval mode) and this
library's DKVB at the same setting (embed 512, 256 codebooks x 4096 keys, key dim 14, value dim
10, top-1) on random embeddings, and reports embeddings per second and peak process memory of
both and their ratios. Each implementation and batch size runs in its own fresh subprocess of this
one invocation, so that each peak memory (VmHWM) is its own.

Needs ``torch`` and ``discrete-key-value-bottleneck-pytorch`` (which pulls
``vector-quantize-pytorch`` and ``einops``). Install torch's CPU build first, so that the package
does not pull PyPI's multi-GB CUDA build:

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install discrete-key-value-bottleneck-pytorch==0.1.1

Without them the script prints why and exits 0, so it can sit in a benchmark sweep.

The package's ``dim`` is the key dim of one codebook, but it hands ``dim * codebooks`` to
``VectorQuantize`` without ``codebook_dim``, which then gives every codebook 3584-dim keys behind
a 3584 -> 917504 projection (over 50 GB of weights at the paper setting). The script passes
``codebook_dim=14`` so that the PyTorch model is the paper's: 256 codebooks of 14-dim keys.

``results/torch_compare.json`` was made in a separate Python 3.11.7 venv (torch 2.13.0+cpu from a
local wheel, discrete-key-value-bottleneck-pytorch 0.1.1, vector-quantize-pytorch 1.32.0,
jax/jaxlib 0.10.2, this library installed with ``pip install --ignore-requires-python -e .``):

    python experiments/benchmarks/torch_compare.py --batch 256 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _torch_rate(args) -> float:
    import torch
    from discrete_key_value_bottleneck_pytorch import DiscreteKeyValueBottleneck

    torch.set_num_threads(args.threads)
    model = DiscreteKeyValueBottleneck(
        dim=14,
        dim_embed=args.embed,
        num_memories=args.keys,
        num_memory_codebooks=args.codebooks,
        dim_memory=10,
        decay=0.9,
        codebook_dim=14,  # else each codebook gets dim * codebooks-dim keys (see docstring)
    ).eval()
    model.vq.eval()
    x = torch.randn(args.batch, 1, args.embed)
    best = float("inf")
    with torch.no_grad():
        model(x)
        for _ in range(args.repeats):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return args.batch / best


def _jax_rate(args) -> float:
    import jax
    from _common import time_call

    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.model import DKVB

    cfg = DKVBConfig(
        embed_dim=args.embed,
        num_classes=10,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
        key_dim=14,
    )
    model = DKVB(cfg)
    x = jax.random.normal(jax.random.key(0), (args.batch, args.embed))
    variables = jax.jit(model.init)(jax.random.key(1), x[:2])
    t = time_call(jax.jit(model.apply), variables, x, repeats=args.repeats)
    return args.batch / t.best_wall_s


def worker(args) -> None:
    """One implementation at one batch size, in its own process: prints one JSON line."""
    from _common import peak_rss_mib

    rate = (_torch_rate if args.worker == "torch" else _jax_rate)(args)
    print(json.dumps({"emb_per_s": rate, "peak_mib": peak_rss_mib()}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--codebooks", type=int, default=256)
    parser.add_argument("--keys", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", default=None, help="JSON path (default results/torch_compare.json)"
    )
    parser.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.batch = args.batch[0]
        worker(args)
        return 0
    try:
        import discrete_key_value_bottleneck_pytorch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        print(
            f"SKIPPED: {err}. This comparison needs torch (CPU build) and "
            "discrete-key-value-bottleneck-pytorch==0.1.1; see this script's docstring."
        )
        return 0

    from _common import forwarded_flags, print_table, run_isolated, write_json

    common = forwarded_flags(args, ("embed", "codebooks", "keys", "threads", "repeats"))
    rows = []
    for batch in args.batch:
        m = {
            side: run_isolated(Path(__file__), ["--worker", side, "--batch", str(batch), *common])
            for side in ("torch", "jax")
        }
        rows.append(
            {
                "batch": batch,
                "pytorch emb/s": m["torch"]["emb_per_s"],
                "dkvb_jax emb/s": m["jax"]["emb_per_s"],
                "speed ratio": m["jax"]["emb_per_s"] / m["torch"]["emb_per_s"],
                "pytorch peak MiB": m["torch"]["peak_mib"],
                "dkvb_jax peak MiB": m["jax"]["peak_mib"],
                "memory ratio": m["torch"]["peak_mib"] / m["jax"]["peak_mib"],
            }
        )
        print(f"batch {batch}: {json.dumps(rows[-1])}", flush=True)
    print_table(rows, "inference: discrete-key-value-bottleneck-pytorch vs dkvb_jax")
    from importlib.metadata import version

    versions = {
        name: version(name)
        for name in (
            "torch",
            "discrete-key-value-bottleneck-pytorch",
            "vector-quantize-pytorch",
            "jaxlib",
            "flax",
        )
    }
    path = write_json(
        "torch_compare", {"args": vars(args), "versions": versions, "rows": rows}, args.out
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
