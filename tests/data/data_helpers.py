"""Helpers for the data tests: tiny image folders and zips written with PIL."""

import io
import pathlib
import zipfile

import pytest
from PIL import Image

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared"
CIFAR10_ZIP = SHARED / "data" / "cifar10" / "cifar10-jpeg.zip"
needs_cifar10_zip = pytest.mark.skipif(
    not CIFAR10_ZIP.exists(),
    reason="needs ../shared/data/cifar10/cifar10-jpeg.zip: not in a fresh clone",
)


def image_bytes(color, size=(6, 5), mode="RGB", fmt="PNG") -> bytes:
    """Encoded bytes of a solid image; `size` is (width, height) as PIL takes it."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def class_color(label: int, index: int) -> tuple[int, int, int]:
    """A colour that encodes (label, index), so a test can check which file it got."""
    return (10 * label + 5, 7 * index + 3, 200)


def layout(splits=("train", "test"), classes=("bird", "ant", "cat"), per_class=(3, 2)):
    """{relative path: bytes} for split/class/NNNN.png with solid, traceable colours."""
    files = {}
    for split, n in zip(splits, per_class, strict=True):
        for label, cls in enumerate(sorted(classes)):
            for i in range(n):
                files[f"{split}/{cls}/{i:04d}.png"] = image_bytes(class_color(label, i))
    return files


def write_folder(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zip(path: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in files.items():
            z.writestr(rel, data)
    return path
