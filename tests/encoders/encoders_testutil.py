"""Paths and helpers shared by the encoder tests (module name kept unique for pytest's rootdir imports)."""

import io
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CIFAR_ZIP = SHARED / "data" / "cifar10" / "cifar10-jpeg.zip"
TFLITE = (
    SHARED / "weights" / "mobilenet_v1" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
)
RESNET_TH = {
    20: SHARED / "weights" / "cifar_resnet" / "resnet20-12fca82f.th",
    56: SHARED / "weights" / "cifar_resnet" / "resnet56-4bfd9763.th",
}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def decode_zip(zf: zipfile.ZipFile, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """JPEGs `test/<class>/<i>.jpg` from a zip -> uint8 [n, 32, 32, 3] and int labels [n]."""
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names]
    )
    labels = np.array([CLASSES.index(n.split("/")[1]) for n in names])
    return images, labels


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def needs_shared(path: pathlib.Path):
    """skipif marker for tests that read ../shared."""
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"needs ../shared ({path.relative_to(SHARED.parent)}): not in a fresh clone",
    )
