"""Two real JAX processes (4 CPU devices each) reproduce the single-process usage, accuracy,
value training and key fitting."""

import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from _tiny import KEYS, VALUES, tiny_problem

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
    # Trained on the valid rows of the padded global batch only, so equal to one device on x.
    values, _ = training.train_values(
        model, variables, x, y, key=jax.random.key(7), config=VALUES, progress=False
    )
    np.testing.assert_allclose(result["values"], values["params"]["values"], rtol=1e-5, atol=1e-5)
    keys, _ = training.fit_keys(
        model, variables, x, key=jax.random.key(4), config=KEYS, progress=False
    )
    np.testing.assert_allclose(result["keys"], keys["frozen"]["keys"], rtol=1e-5, atol=1e-5)
