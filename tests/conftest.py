"""Test-wide set-up: 8 forced CPU devices, so data-parallel and pmap paths run on one host."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most of the suite's time is XLA compilation, and many tests (and both xdist workers, and the
# scripts tests run in subprocesses, which inherit these variables) compile the same programs:
# a persistent compilation cache cut the CPU time of tests/exact with test_fast_eval and
# test_sweep by a quarter on a cold cache (123 -> 92 CPU-s). The cache is keyed by the HLO,
# the jax version and the flags, so a stale entry is never used.
_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """`../shared` beside the repo; tests that need it skip on a fresh clone."""
    if not SHARED.exists():
        pytest.skip("needs ../shared (real CIFAR-10 and weights), absent in a fresh clone")
    return SHARED
