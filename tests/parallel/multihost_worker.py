"""One process of the 2-process CPU test of :mod:`dkvb_jax.parallel.distributed`.

Run as `python multihost_worker.py ADDRESS NUM_PROCESSES PROCESS_ID OUT.npz`; each process owns
4 CPU devices, reads its own slice of a shared synthetic dataset, and process 0 writes the
globally reduced usage histogram, accuracy and logits (gathered with `distributed.to_host`,
after checking that `np.asarray` cannot fetch them), and the values and keys trained on the
valid rows of the padded global batch.
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402

from dkvb_jax import parallel, training  # noqa: E402
from dkvb_jax.parallel import distributed  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _tiny import KEYS, VALUES, tiny_problem  # noqa: E402


def main(address: str, num_processes: int, process_id: int, out: str) -> None:
    # Bounded: a process whose peer never comes up gives up instead of hanging the test.
    distributed.initialize(address, num_processes, process_id, initialization_timeout=120)
    model, variables, x, y = tiny_problem()
    mesh = parallel.data_mesh()
    # Each process reads only its own slice of x and y.
    gx, valid, gy = distributed.global_batch(x, mesh, labels=y)
    usage = training.key_usage(model, variables, gx, gy, mesh=mesh, valid=valid)
    result = training.evaluate(model, variables, gx, gy, mesh=mesh, valid=valid, batch_size=4)
    # The logits are split over both processes' devices: np.asarray cannot fetch them, to_host
    # gathers them (a collective, so every process calls it).
    try:
        np.asarray(result.logits)
        asarray_failed = False
    except RuntimeError:
        asarray_failed = True
    logits = distributed.to_host(result.logits)[distributed.to_host(valid)]
    trained, _ = training.train_values(
        model,
        variables,
        gx,
        gy,
        key=jax.random.key(7),
        config=VALUES,
        mesh=mesh,
        valid=valid,
        progress=False,
    )
    fitted, _ = training.fit_keys(
        model,
        variables,
        gx,
        key=jax.random.key(4),
        config=KEYS,
        mesh=mesh,
        valid=valid,
        progress=False,
    )
    if process_id == 0:
        np.savez(
            out,
            usage=distributed.to_host(usage),
            logits=logits,
            asarray_failed=asarray_failed,
            correct=result.correct,
            count=result.count,
            devices=jax.device_count(),
            values=distributed.to_host(trained["params"]["values"]),
            keys=distributed.to_host(fitted["frozen"]["keys"]),
        )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
