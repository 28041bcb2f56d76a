"""How often the ``rerank`` lookup's bfloat16 stage proves its answer without the exact fallback.

The ``rerank`` search (the default on GPU and TPU) is exact whatever the data: a
`(row, codebook)` pair whose bfloat16 error bound leaves a doubt is searched again over all its
keys. This script counts those pairs at the paper setting (256 codebooks x 4096 keys of dim 14,
random-projection splitter), with keys drawn from the training embeddings as key
initialisation does and queries from the test embeddings, and checks the codes against the
``dense`` search. The bfloat16 stage is explicit, so the counts are the same on every backend
(they were measured on CPU).

    python experiments/benchmarks/rerank_certified.py --cache-dir $DKVB_CACHE_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, required=True, help="cached CIFAR-10 embeddings")
    parser.add_argument("--encoder", default="mobilenet_v1")
    parser.add_argument("--rows", type=int, default=256, help="test rows looked up")
    parser.add_argument("--candidates", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from dkvb_jax.model import lookup, splitter
    from dkvb_jax.model import rerank as rerank_lib

    def embeddings(split: str) -> np.ndarray:
        (path,) = args.cache_dir.glob(f"cifar10_cifar10-{split}-{args.encoder}-*/embeddings.npy")
        return np.load(path, mmap_mode="r")

    train, test = embeddings("train"), embeddings("test")
    rng = np.random.default_rng(0)
    mean, std = train.mean(0), train.std(0) + 1e-6
    keys_x = (np.asarray(train[rng.choice(len(train), 4096, replace=False)]) - mean) / std
    x = (np.asarray(test[: args.rows]) - mean) / std
    proj = splitter.random_projection(jax.random.key(0), train.shape[1], 256, 14)
    keys = splitter.project(jnp.asarray(keys_x, jnp.float32), proj).transpose(1, 0, 2)
    queries = splitter.project(jnp.asarray(x, jnp.float32), proj)
    mask = jnp.zeros(keys.shape[:2], bool)
    ref = lookup.nearest_keys(queries, keys, mask, method="dense", chunk=64).indices
    prepared = rerank_lib.prepare(keys)
    rows = []
    for m in args.candidates:
        fn = jax.jit(lambda q, m=m: rerank_lib.search_rows(q, keys, mask, prepared, 1, m))
        idx, _, certified = jax.lax.map(fn, queries.reshape(-1, 16, *queries.shape[1:]))
        idx = idx.reshape(ref.shape)
        certified = np.asarray(certified).reshape(-1)
        rows.append(
            {
                "candidates": m,
                "pairs": int(certified.size),
                "certified_fraction": float(certified.mean()),
                "codes_equal_dense": bool((np.asarray(idx) == np.asarray(ref)).all()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
