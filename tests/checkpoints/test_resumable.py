"""Resumable value training: an interrupted then resumed run equals an uninterrupted one.

`training.train_values(checkpoint_dir=...)`, on one device and on a mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax import checkpoints, parallel, training
from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import DKVB

CONFIG = DKVBConfig(embed_dim=16, num_classes=3, num_codebooks=8, num_keys=16, key_dim=4)
TRAIN = training.ValueTrainConfig(epochs=4, batch_size=16, optimizer="adam", learning_rate=0.1)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 37).astype(np.int32)
    x = (rng.normal(size=(3, 16))[y] * 2 + rng.normal(size=(37, 16))).astype(np.float32)
    model = DKVB(CONFIG)
    return model, model.init(jax.random.key(0), jnp.asarray(x[:2])), x, y


def _equal(a, b):
    return all(
        np.asarray(p).tobytes() == np.asarray(q).tobytes()
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _mesh(name):
    if name is None:
        return None
    if jax.device_count() < 8:
        pytest.skip("needs the 8 forced CPU devices of tests/conftest.py")
    return parallel.data_mesh(8)


@pytest.mark.parametrize("mesh", [None, "data8"], ids=["one-device", "data8"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_equals_uninterrupted(tmp_path, problem, stop_after, mesh, capsys):
    model, variables, x, y = problem
    kwargs = dict(
        key=jax.random.key(1), config=TRAIN, eval_data=(x, y), mesh=_mesh(mesh), progress=False
    )
    want, want_hist = training.train_values(model, variables, x, y, **kwargs)

    def interrupt(epoch, *_):
        if epoch == stop_after:
            raise Interrupted

    kwargs["checkpoint_dir"] = tmp_path
    with pytest.raises(Interrupted):
        training.train_values(model, variables, x, y, on_epoch_end=interrupt, **kwargs)
    seen = []
    got, hist = training.train_values(
        model,
        variables,
        x,
        y,
        on_epoch_end=lambda e, *_: seen.append(e),
        **{**kwargs, "progress": True},
    )
    assert seen == list(range(stop_after + 1, TRAIN.epochs + 1))
    assert f"resuming value training from epoch {stop_after} of {TRAIN.epochs}" in (
        capsys.readouterr().err
    )
    assert _equal(got, want)
    assert hist == want_hist


def test_keeps_only_the_last_checkpoints(tmp_path, problem):
    model, variables, x, y = problem
    training.train_values(
        model,
        variables,
        x,
        y,
        key=jax.random.key(1),
        checkpoint_dir=tmp_path,
        config=TRAIN,
        max_to_keep=2,
        progress=False,
    )
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [3, 4]


def _raise(*_):
    raise Interrupted


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda kw, y: ({**kw, "key": jax.random.key(2)}, y), "key"),
        (
            lambda kw, y: ({**kw, "config": dataclasses.replace(TRAIN, learning_rate=0.2)}, y),
            "train_config",
        ),
        (lambda kw, y: (kw, (y + 1) % 3), "data"),
    ],
    ids=["key", "train-config", "labels"],
)
def test_resume_of_a_different_run_is_refused(tmp_path, problem, change, field):
    model, variables, x, y = problem
    kwargs = dict(key=jax.random.key(1), checkpoint_dir=tmp_path, config=TRAIN, progress=False)
    with pytest.raises(Interrupted):
        training.train_values(model, variables, x, y, on_epoch_end=_raise, **kwargs)
    kwargs, y = change(kwargs, y)
    with pytest.raises(checkpoints.CheckpointError, match=f"differs in: .*{field}"):
        training.train_values(model, variables, x, y, **kwargs)
