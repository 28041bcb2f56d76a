"""Test-wide set-up: 8 forced CPU devices, so data-parallel and pmap paths run on one host."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """`../shared` beside the repo; tests that need it skip on a fresh clone."""
    if not SHARED.exists():
        pytest.skip("needs ../shared (real CIFAR-10 and weights), absent in a fresh clone")
    return SHARED
