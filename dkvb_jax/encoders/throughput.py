"""Encoding throughput (images/s after compilation) of a registered encoder on real JPEGs.

  python -m dkvb_jax.encoders.throughput --encoder mobilenet_v1 --images 512 --batch-size 64 \
      --zip ../shared/data/cifar10/cifar10-jpeg.zip
"""

from __future__ import annotations

import argparse
import io
import os
import time
import zipfile

import numpy as np
from PIL import Image

from dkvb_jax.encoders import registry


def load_jpegs(zip_path: str, count: int) -> np.ndarray:
    """The first `count` test JPEGs (sorted names) of an image-folder zip, uint8 [n, h, w, 3]."""
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        # Spread over classes: take every k-th name.
        names = names[:: max(1, len(names) // count)][:count]
        return np.stack(
            [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names]
        )


def measure(
    encoder: registry.Encoder, images: np.ndarray, batch_size: int, repeats: int = 2
) -> tuple[float, float]:
    """Best-of-`repeats` (images per wall second, images per CPU second) of `encoder.embed`.

    Compilation is excluded. The CPU-second rate (all threads of this process) is the one to
    compare across runs on a shared machine.
    """
    encoder.embed(images[:batch_size], batch_size=batch_size)  # Compile.
    wall = cpu = float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        encoder.embed(images, batch_size=batch_size)
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return len(images) / wall, len(images) / cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=registry.DEFAULT_ENCODER)
    parser.add_argument("--path", default=None, help="weights file, if the encoder needs one")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--zip", default="../shared/data/cifar10/cifar10-jpeg.zip")
    args = parser.parse_args(argv)
    kwargs = {"path": args.path} if args.path else {}
    encoder = registry.get_encoder(args.encoder, **kwargs)
    images = load_jpegs(args.zip, args.images)
    wall, cpu = measure(encoder, images, args.batch_size)
    print(
        f"{encoder.name}: {wall:.1f} images/s wall, {cpu:.1f} images per CPU-second "
        f"({len(images)} images {images.shape[1:3]}, batch {args.batch_size}, after compilation; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
