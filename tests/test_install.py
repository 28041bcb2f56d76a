"""The core install: `import dkvb_jax` pulls in no optional or test-only package, and the
optional paths say which extra they need when it is missing."""

import subprocess
import sys

import numpy as np
import pytest

from dkvb_jax.data import TfdsSource
from dkvb_jax.encoders import state_dict
from dkvb_jax.errors import InputError

# Test-only or optional packages (setup.cfg's extras) and heavy ones only some paths use.
NOT_ON_IMPORT = (
    "tensorflow",
    "tensorflow_datasets",
    "chex",
    "safetensors",
    "torch",
    "ai_edge_litert",
    "grain",
    "hypothesis",
    "pytest",
    "sklearn",
    "matplotlib",
)


# The package, and what `dkvb --help` loads (the command line and the experiment pipeline).
@pytest.mark.parametrize("modules", ["dkvb_jax", "dkvb_jax.cli.main, dkvb_jax.experiment"])
def test_import_pulls_in_no_optional_package(modules):
    probe = (
        f"import sys, {modules}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "dkvb_jax" in loaded
    assert not loaded & set(NOT_ON_IMPORT), sorted(loaded & set(NOT_ON_IMPORT))


def test_tfds_dataset_without_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(InputError, match=r"dataset 'cifar100'.*pip install 'dkvb_jax\[tfds\]'"):
        TfdsSource("cifar100", "train")


def test_safetensors_file_reads_without_the_safetensors_package(tmp_path, monkeypatch):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.int64)}
    path = tmp_path / "weights.safetensors"
    pytest.importorskip("safetensors.numpy").save_file(arrays, str(path))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    read = state_dict.load_safetensors(path)
    assert sorted(read) == ["b", "w"]
    for name, value in arrays.items():
        np.testing.assert_array_equal(read[name], value)
        assert read[name].dtype == value.dtype
