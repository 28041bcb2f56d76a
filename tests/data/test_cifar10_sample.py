"""The CIFAR-10 sample shipped in the package, and the script that builds it from ../shared."""

import hashlib
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from data_helpers import CIFAR10_ZIP, needs_cifar10_zip

from dkvb_jax.data import CIFAR10_CLASSES, cifar10_sample_path, load_cifar10_sample

SHA256 = "e4cd15f86887ff6e9feab6e662b3758191336c316f231db376bd2778f9740b61"
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_sample_file_is_the_documented_one():
    path = cifar10_sample_path()
    assert path.stat().st_size < 3_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256


@pytest.mark.parametrize("split, per_class", [("train", 200), ("test", 50)])
def test_sample_loads_balanced_with_cifar10_labels(split, per_class):
    src = load_cifar10_sample(split)
    assert src.class_names == CIFAR10_CLASSES and len(src) == 10 * per_class
    np.testing.assert_array_equal(np.bincount(src.labels, minlength=10), [per_class] * 10)
    for member, label in zip(src.members, src.labels, strict=True):
        assert member.startswith(f"{split}/{CIFAR10_CLASSES[label]}/")
    batch = next(src.batches(64, shuffle=True, seed=0))
    assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert 40 < batch["image"].mean() < 200  # Real photographs, not blank.


def test_sample_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        load_cifar10_sample("validation")


@needs_cifar10_zip
@pytest.mark.shared
def test_sample_bytes_are_the_originals():
    with zipfile.ZipFile(cifar10_sample_path()) as sample, zipfile.ZipFile(CIFAR10_ZIP) as full:
        names = sample.namelist()
        assert len(names) == 2500
        for name in names[::50]:
            assert sample.read(name) == full.read(name)  # Copied, not re-encoded.


@needs_cifar10_zip
@pytest.mark.shared
def test_builder_script_reproduces_the_sample():
    script = REPO / "experiments" / "make_cifar10_sample.py"
    out = subprocess.run(
        [sys.executable, str(script), "--check", "--source", str(CIFAR10_ZIP)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical" in out.stdout
