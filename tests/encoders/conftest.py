"""Fixtures shared by the encoder tests: the shipped CIFAR-10 sample JPEGs."""

import zipfile

import numpy as np
import pytest
from encoders_testutil import decode_zip

from dkvb_jax.encoders import _weights


@pytest.fixture(scope="session")
def cifar_samples() -> tuple[list[str], np.ndarray, np.ndarray]:
    """The 20 shipped CIFAR-10 test JPEGs: (names, uint8 images [20, 32, 32, 3], labels [20])."""
    with zipfile.ZipFile(_weights.asset_path("cifar10_test_samples.zip")) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        images, labels = decode_zip(zf, names)
    return names, images, labels
