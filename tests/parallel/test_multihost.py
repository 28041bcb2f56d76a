"""Two real JAX processes (4 CPU devices each) reproduce the single-process usage, accuracy,
value training and key fitting."""

import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _tiny import KEYS, VALUES, tiny_problem

from dkvb_jax import training

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


# Both workers together, with their compilations; far above what they need on an idle machine
# so that a loaded CI machine passes, and still a bound: a hung worker is killed.
TIMEOUT_S = 480


def run_workers(out, num_processes: int = 2) -> list[str]:
    """Starts the workers on 127.0.0.1 and waits for all; kills every one on a timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                f"127.0.0.1:{port}",
                str(num_processes),
                str(i),
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        logs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-host workers still running after {TIMEOUT_S} s; killed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return logs


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    out = tmp_path / "result.npz"
    run_workers(out)
    result = np.load(out)
    model, variables, x, y = tiny_problem()
    assert int(result["devices"]) == 8
    np.testing.assert_array_equal(
        result["usage"], np.asarray(training.key_usage(model, variables, x, y))
    )
    assert int(result["count"]) == len(x)
    logits = np.asarray(model.apply(variables, x))
    assert int(result["correct"]) == int(np.sum(logits.argmax(-1) == y))
    # The logits were split over the processes: np.asarray failed, to_host gathered them.
    assert bool(result["asarray_failed"])
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-6, atol=1e-6)
    # Trained on the valid rows of the padded global batch only, so equal to one device on x.
    values, _ = training.train_values(
        model, variables, x, y, key=jax.random.key(7), config=VALUES, progress=False
    )
    np.testing.assert_allclose(result["values"], values["params"]["values"], rtol=1e-5, atol=1e-5)
    keys, _ = training.fit_keys(
        model, variables, x, key=jax.random.key(4), config=KEYS, progress=False
    )
    np.testing.assert_allclose(result["keys"], keys["frozen"]["keys"], rtol=1e-5, atol=1e-5)
