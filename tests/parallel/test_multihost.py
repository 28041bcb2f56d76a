"""Two real JAX processes (4 CPU devices each) reproduce the single-process usage and accuracy."""

import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from _tiny import tiny_problem

from dkvb_jax import training

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), f"localhost:{port}", "2", str(i), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    result = np.load(out)
    model, variables, x, y = tiny_problem()
    assert int(result["devices"]) == 8
    np.testing.assert_array_equal(
        result["usage"], np.asarray(training.key_usage(model, variables, x, y))
    )
    assert int(result["count"]) == len(x)
    assert int(result["correct"]) == int(
        np.sum(np.asarray(model.apply(variables, x)).argmax(-1) == y)
    )
