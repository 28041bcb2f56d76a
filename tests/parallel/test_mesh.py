"""Meshes, shardings and per-process slices."""

import jax

if jax.device_count() < 8:
    jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _tiny import tiny_problem  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dkvb_jax import parallel  # noqa: E402
from dkvb_jax.parallel import distributed  # noqa: E402


def test_mesh_shapes():
    assert parallel.data_mesh().shape == {"data": 8}
    mesh = parallel.data_codebook_mesh(2, 4)
    assert (parallel.data_size(mesh), parallel.codebook_size(mesh)) == (2, 4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: parallel.data_mesh(9), "exceeds the 8 available devices"),
        (lambda: parallel.data_mesh(0), "positive int"),
        (lambda: parallel.data_codebook_mesh(4, 0), "codebook must be a positive int"),
    ],
)
def test_mesh_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_variables_shardings_codebook_layout():
    _, variables, _, _ = tiny_problem()
    specs = jax.tree.map(
        lambda s: s.spec,
        parallel.variables_shardings(variables, parallel.data_codebook_mesh(2, 4)),
    )
    assert specs["params"]["values"] == P("codebook")
    assert specs["frozen"]["keys"] == P("codebook")
    assert specs["frozen"]["projection"] == P(None, "codebook")
    assert specs["mask"]["search"] == P("codebook")
    replicated = parallel.variables_shardings(variables, parallel.data_mesh(8))
    assert all(s.spec == P() for s in jax.tree.leaves(replicated))


def test_variables_shardings_refuses_indivisible_codebooks():
    _, variables, _, _ = tiny_problem()  # 8 codebooks
    mesh = parallel.data_codebook_mesh(1, 3)
    with pytest.raises(ValueError, match="must be divisible by the codebook axis size"):
        parallel.variables_shardings(variables, mesh)


@pytest.mark.parametrize("n", [1, 8, 13])
def test_shard_batch_pads_and_masks(n):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    xs, valid = parallel.shard_batch(x, parallel.data_mesh(8))
    assert xs.shape[0] % 8 == 0 and xs.shape[0] - n < 8
    np.testing.assert_array_equal(np.asarray(xs)[:n], x)
    np.testing.assert_array_equal(np.asarray(valid), np.arange(xs.shape[0]) < n)
    assert xs.sharding.spec == P("data")


@pytest.mark.parametrize("n, count, multiple", [(1, 2, 4), (53, 2, 4), (64, 4, 2), (10, 3, 1)])
def test_process_slices_cover_every_example_once(n, count, multiple):
    slices = [
        distributed.process_slice(n, multiple=multiple, process_index=i, process_count=count)
        for i in range(count)
    ]
    assert len({len(idx) for idx, _ in slices}) == 1
    assert all(len(idx) % multiple == 0 for idx, _ in slices)
    rows = np.concatenate([idx[valid] for idx, valid in slices])
    np.testing.assert_array_equal(rows, np.arange(n))


def test_global_batch_single_process_is_padded_dataset():
    _, _, x, y = tiny_problem()
    mesh = parallel.data_mesh(8)
    gx, valid, gy = distributed.global_batch(x, mesh, labels=y)
    assert int(valid.sum()) == len(x)
    np.testing.assert_array_equal(np.asarray(gx)[: len(x)], x)
    np.testing.assert_array_equal(np.asarray(gy)[: len(y)], y)


def test_initialize_is_a_no_op_unless_requested(monkeypatch):
    monkeypatch.delenv("DKVB_COORDINATOR_ADDRESS", raising=False)
    assert distributed.initialize() is False
