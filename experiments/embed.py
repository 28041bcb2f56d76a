"""Encode a dataset's train and test splits into the embedding cache and report a linear probe.

Reproduces the README's encoder table, e.g.:

    python experiments/embed.py --encoder mobilenet_v1 --dataset cifar10 \
        --data-dir ../shared/data/cifar10 --json outputs/embed_mobilenet_v1.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

from dkvb_jax.embedding import DEFAULT_CACHE_DIR, embed_dataset
from dkvb_jax.evaluation.probe import linear_probe


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--encoder", default="mobilenet_v1")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)

    report = {
        "encoder": args.encoder,
        "dataset": args.dataset,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg": os.getloadavg(),
        },
    }
    splits = {}
    for split in ("train", "test"):
        start = time.perf_counter()
        cached = embed_dataset(
            args.encoder,
            args.dataset,
            split,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - start
        splits[split] = cached
        report[split] = {
            "examples": len(cached.labels),
            "seconds": seconds,
            "from_cache": cached.from_cache,
            "path": str(cached.path),
        }
        if not cached.from_cache:
            report[split]["images_per_second"] = len(cached.labels) / seconds
        print(
            f"{split}: {len(cached.labels)} embeddings of dim {cached.embeddings.shape[1]} "
            f"({'cache' if cached.from_cache else f'{len(cached.labels) / seconds:.1f} images/s'})"
        )
    probe = linear_probe(
        splits["train"].embeddings,
        splits["train"].labels,
        splits["test"].embeddings,
        splits["test"].labels,
    )
    report["linear_probe"] = probe.__dict__
    print(
        f"linear probe: train {probe.train_accuracy:.2%}  test {probe.test_accuracy:.2%} "
        f"({probe.fit_seconds:.1f} s)"
    )
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
