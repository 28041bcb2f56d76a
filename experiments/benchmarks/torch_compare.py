"""Side by side with discrete-key-value-bottleneck-pytorch, in the same process invocation.

Runs the PyTorch package's ``DiscreteKeyValueBottleneck`` (frozen keys, CPU, eval mode) and this
library's DKVB at the same setting (embed 512, 256 codebooks x 4096 keys, key dim 14, value dim
10, top-1) on the same random embeddings, and reports embeddings per second of both and the ratio.

Needs ``torch`` and ``discrete-key-value-bottleneck-pytorch`` (which pulls
``vector-quantize-pytorch`` and ``einops``). Install torch's CPU build, e.g.
``pip install torch --index-url https://download.pytorch.org/whl/cpu`` then
``pip install discrete-key-value-bottleneck-pytorch==0.1.1``. Without them the script prints why
and exits 0, so it can sit in a benchmark sweep.

    python experiments/benchmarks/torch_compare.py --batch 256
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--codebooks", type=int, default=256)
    parser.add_argument("--keys", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", default=None, help="JSON path (default results/torch_compare.json)"
    )
    args = parser.parse_args(argv)
    try:
        import discrete_key_value_bottleneck_pytorch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        print(
            f"SKIPPED: {err}. This comparison needs torch (CPU build) and "
            "discrete-key-value-bottleneck-pytorch==0.1.1; see this script's docstring."
        )
        return 0

    from _common import print_table, write_json

    torch_rate = _torch_rate(args)
    jax_rate = _jax_rate(args)
    rows = [
        {"implementation": "discrete-key-value-bottleneck-pytorch", "emb/s": torch_rate},
        {"implementation": "dkvb_jax", "emb/s": jax_rate},
        {"implementation": "ratio (dkvb_jax / pytorch)", "emb/s": jax_rate / torch_rate},
    ]
    print_table(rows, f"inference at batch {args.batch}")
    path = write_json("torch_compare", {"args": vars(args), "rows": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
