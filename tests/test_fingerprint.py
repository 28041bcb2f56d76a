"""The one sha256 helper keeps every stored digest's byte layout (values computed by the
per-module helpers it replaced): checkpoints, caches and audit records written before still
verify."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dkvb_jax import _fingerprint
from dkvb_jax.checkpoints._orbax import checksums
from dkvb_jax.data.cache import cache_path
from dkvb_jax.exact import api
from dkvb_jax.exact.statistics import fingerprint as stats_fingerprint
from dkvb_jax.experiment import class_unlearning
from dkvb_jax.provenance import Rows
from dkvb_jax.unlearning.audit import variables_hash

ARRAYS = (
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array([1, 0, 3], np.int32),
    np.array(7, np.int64),
    np.array([True, False]),
    np.arange(4).astype(ml_dtypes.bfloat16),
    np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not contiguous
)
VARIABLES = {
    "frozen": {"keys": jnp.ones((2, 3, 4)), "projection": jnp.arange(24.0).reshape(2, 3, 4)},
    "mask": {"search": jnp.array([[True, False, True], [False, True, True]])},
    "params": {"values": jnp.zeros((2, 3, 5)), "splitter": {"w": jnp.ones((2,))}},
}

CASES = {
    "arrays": (
        lambda: _fingerprint.arrays_sha256(*ARRAYS),
        "a1587a3e5e6ea056c4c16068650829b2fda6b126b2faa42c08a42817d4e600f3",
    ),
    "variables_hash": (
        lambda: variables_hash(VARIABLES),
        "86bf4e8cf9470485268f029ca51711ab0b02efc14ed86bc582ccb4c1f9d748f1",
    ),
    "exact stats fingerprint": (lambda: stats_fingerprint(VARIABLES), "b70eda1903dd449e"),
    "exact stats fingerprint, no splitter": (
        lambda: stats_fingerprint({**VARIABLES, "params": {"values": jnp.zeros((2, 3, 5))}}),
        "fc5eb967edabf4ae",
    ),
    "rows, all": (
        lambda: Rows("cifar10/train").digest,
        "4a47fc68ffc8252633985b30962dac850552d191e595eba2a86fb1a0d44664ab",
    ),
    "rows, ids": (
        lambda: Rows("cifar10/train", ids=np.array([3, 1, 2]), labels=True).digest,
        "f0731f966462306da7b2836bddf2779e28af58b19041a9d1e469470c9e9a8a0a",
    ),
    "cache folder": (
        lambda: (
            cache_path(
                "/c",
                encoder_name="mobilenet_v1",
                dataset_name="cifar10",
                split="train",
                preprocessing_tag="p",
            ).name
        ),
        "cifar10-train-mobilenet_v1-p-9fcabe03eb8d",
    ),
    "checkpoint leaf": (
        lambda: checksums({"a": {"b": np.arange(5.0)}})["a/b"]["sha256"],
        "2e56f28a9e0f9491c2f7ffc69fd6c86c97beee31c999aaf30be359591cc24b6f",
    ),
    "checkpoint leaf, bfloat16": (
        lambda: checksums({"c": jnp.ones((2, 2), jnp.bfloat16)})["c"]["sha256"],
        "19c73878efaf4541a616d78b20071dd587d83591c7bd60bf150eb99a0136ea18",
    ),
    "exact counts": (
        lambda: api._counts_hash(jnp.arange(10, dtype=jnp.int32).reshape(2, 5)),
        "10b4796eac59c7d8",
    ),
    # Changes on purpose with ROWS_VERSION and ExperimentConfig's defaults: rows cached under
    # other settings or by an older pipeline are then measured again.
    "experiment run id": (
        lambda: class_unlearning._run_id(class_unlearning.ExperimentConfig(), *ARRAYS[:2]),
        "d125362510d4a5fc",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_digest_layouts_are_unchanged(name):
    fn, want = CASES[name]
    assert fn() == want


def test_file_sha256_streams_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 20000)  # several read blocks
    want = "13fbe33cdd58fa5b9025c6eebae5b36b2d822086ad9a93a82a2ec18bb7d0531a"
    assert _fingerprint.file_sha256(path) == want == _fingerprint.sha256(path.read_bytes())


def test_typed_digest_tells_shapes_and_dtypes_apart():
    x = np.arange(6, dtype=np.int32)
    digests = {
        _fingerprint.arrays_sha256(v)
        for v in (x, x.reshape(2, 3), x.reshape(3, 2), x.astype(np.uint32), x.view(np.float32))
    }
    assert len(digests) == 5
    assert _fingerprint.sha256(x) == _fingerprint.sha256(x.reshape(2, 3))  # bytes only
