"""One process of the 2-process CPU test of :mod:`dkvb_jax.parallel.distributed`.

Run as `python multihost_worker.py ADDRESS NUM_PROCESSES PROCESS_ID OUT.npz`; each process owns
4 CPU devices, reads its own slice of a shared synthetic dataset, and process 0 writes the
globally reduced usage histogram and accuracy, and the values and keys trained on the valid rows
of the padded global batch.
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
    distributed.initialize(address, num_processes, process_id)
    model, variables, x, y = tiny_problem()
    mesh = parallel.data_mesh()
    gx, valid, gy = distributed.global_batch(x, mesh, labels=y)
    usage = training.key_usage(model, variables, gx, gy, mesh=mesh, valid=valid)
    result = training.evaluate(model, variables, gx, gy, mesh=mesh, valid=valid, batch_size=4)
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
            usage=np.asarray(usage),
            correct=result.correct,
            count=result.count,
            devices=jax.device_count(),
            values=np.asarray(trained["params"]["values"]),
            keys=np.asarray(fitted["frozen"]["keys"]),
        )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
