"""Builds the CIFAR-10 sample shipped in dkvb_jax/assets/cifar10_sample/ from ../shared.

Copies the original JPEG bytes (no re-encoding) of a balanced, seeded random subset of
../shared/data/cifar10/cifar10-jpeg.zip into a stored (uncompressed) zip with the same
``split/class/NNNN.jpg`` layout. Member order and timestamps are fixed, so the output is
byte-for-byte reproducible:

    python experiments/make_cifar10_sample.py            # 200 train + 50 test per class
    python experiments/make_cifar10_sample.py --check    # rebuild in memory and compare
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import sys
import zipfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.zip"
DEFAULT_OUT = REPO / "dkvb_jax" / "assets" / "cifar10_sample" / "cifar10_sample.zip"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def build(source: pathlib.Path, per_class: dict[str, int], seed: int) -> bytes:
    """Returns the sample zip's bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        names = set(src.namelist())
        for split, count in per_class.items():
            for label, cls in enumerate(CLASSES):
                members = sorted(
                    n for n in names if n.startswith(f"{split}/{cls}/") and not n.endswith("/")
                )
                if len(members) < count:
                    sys.exit(f"{source} has {len(members)} images in {split}/{cls}, need {count}.")
                # One generator per (split, class) so changing one count leaves the others alone.
                rng = np.random.default_rng([seed, label, 0 if split == "train" else 1])
                chosen = sorted(rng.choice(len(members), size=count, replace=False))
                for i in chosen:
                    info = zipfile.ZipInfo(members[i], date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_STORED  # JPEG does not compress further.
                    info.external_attr = 0o644 << 16
                    dst.writestr(info, src.read(members[i]))
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", type=pathlib.Path, default=DEFAULT_SOURCE)
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = p.parse_args()
    if not args.source.exists():
        sys.exit(f"{args.source} not found; it comes with ../shared (see its README).")
    data = build(
        args.source, {"train": args.train_per_class, "test": args.test_per_class}, args.seed
    )
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        same = args.out.exists() and args.out.read_bytes() == data
        print(f"{'identical' if same else 'DIFFERENT'}: {args.out} (rebuilt sha256 {digest})")
        sys.exit(0 if same else 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}: {len(data):,} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
