"""Same seed, same data: `dkvb compare` writes bit-identical rows, whatever the thread count.

Only timings may differ between runs (wall seconds, audit timestamps); every accuracy, MIA,
FLOP count, chosen N, trajectory and hash must be equal, including in a second process whose
XLA runs its matrix products on one thread instead of a pool.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dkvb_jax.cli.main import main
from dkvb_jax.testing import clustered_embeddings

# The shipped ResNet-20 config's recipe (SGD-trained values), with a baseline, MIA and sweeps.
ARGS = [
    "--codebooks",
    "8",
    "--keys",
    "32",
    "--key-dim",
    "4",
    "--key-epochs",
    "2",
    "--value-epochs",
    "3",
    "--recipe",
    "paper",
    "--baselines",
    "finetune",
    "scrub",
    "--baseline-max-epochs",
    "2",
    "--head-epochs",
    "3",
    "--no-progress",
]
# Entries that measure time, not results.
TIMING = re.compile(r"wall|seconds|timestamp|_s$")


def _results(out) -> list:
    """The rows of a compare run without their timings."""

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if not TIMING.search(k)}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    saved = json.loads((out / "results.json").read_text())
    sweeps = json.loads((out / "sweeps.json").read_text())
    return strip([saved["rows"], saved["meta"]["n_a"], saved["meta"]["n_e"], sweeps])


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    x, y = clustered_embeddings(0, 400, num_classes=4, dim=16, noise=1.5)
    xt, yt = clustered_embeddings(1, 160, num_classes=4, dim=16, noise=1.5)
    path = tmp_path_factory.mktemp("data") / "emb.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return str(path)


def test_two_compare_runs_give_bit_identical_rows(npz, tmp_path):
    runs = []
    for name in ("a", "b"):
        assert main(["compare", "--embeddings", npz, *ARGS, "--out", str(tmp_path / name)]) == 0
        runs.append(_results(tmp_path / name))
    assert runs[0] == runs[1]
    # A second process on one XLA thread: no reduction may depend on the thread pool.
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dkvb_jax.cli.main",
            "compare",
            "--embeddings",
            npz,
            *ARGS,
            "--out",
            str(tmp_path / "c"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    assert _results(tmp_path / "c") == runs[0]
