"""Continued value training after unlearning: masked pairs never move, whatever the optimiser."""

import jax

if jax.device_count() < 8:  # conftest.py forces 8 CPU devices; keep the module runnable alone.
    jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

from dkvb_jax import DKVB, DKVBConfig, parallel, training  # noqa: E402
from dkvb_jax.testing import clustered_embeddings  # noqa: E402
from dkvb_jax.training import values as values_lib  # noqa: E402
from dkvb_jax.unlearning import forget_classes, masked_pairs  # noqa: E402

CFG = DKVBConfig(embed_dim=16, num_classes=4, num_codebooks=8, num_keys=32, key_dim=4)
BATCH = 64
OPTIMISERS = {
    "adamw": lambda: optax.adamw(0.05, weight_decay=0.1),
    "adam": lambda: optax.adam(0.05),
    "sgd_momentum": lambda: optax.sgd(0.3, momentum=0.9),
}
# (mode, hard): a hard deletion zeroes the masked values; a soft readout mask keeps them, so
# weight decay alone would shrink them.
UNLEARNING = [("search", True), ("readout", False)]


@pytest.fixture(scope="module")
def fitted():
    x, y = clustered_embeddings(0, 512, num_classes=4, clusters_per_class=2, dim=16)
    xt, yt = clustered_embeddings(1, 400, num_classes=4, clusters_per_class=2, dim=16)
    model = DKVB(CFG)
    variables = model.init(jax.random.key(0), x[:2])
    variables, _ = training.fit_keys(
        model,
        variables,
        x,
        key=jax.random.key(1),
        config=training.KeyInitConfig(epochs=2),
        progress=False,
    )
    return model, variables, (x, y), (xt, yt)


@pytest.fixture(scope="module")
def pretrained(fitted):
    """Per optimiser: variables after one epoch with it, and the optimiser state it ended with."""
    model, variables, (x, y), _ = fitted
    inputs, y, out = training.compute_codes(model, variables, x), jnp.asarray(y), {}
    for name, make in OPTIMISERS.items():
        tx = make()
        state = tx.init(variables["params"])
        params, state, _, _ = _epoch(
            None, model, tx, variables, state, inputs, y, jax.random.key(2)
        )
        out[name] = (tx, {**variables, "params": params}, state)
    return out


def _forget_class_0(model, variables, data, mode, hard):
    x, y = data
    forgotten, _ = forget_classes(model, variables, 0, 8, x=x, y=y, mode=mode, hard=hard)
    return forgotten


def _check_masked_unchanged(before, after):
    masked = np.asarray(masked_pairs(before))
    old = np.asarray(before["params"]["values"])
    new = np.asarray(after["params"]["values"])
    assert masked.any() and not masked.all()
    assert old[masked].tobytes() == new[masked].tobytes(), "masked values moved"
    assert not np.array_equal(old[~masked], new[~masked]), "unmasked values did not train"


def _epoch(mesh, model, tx, variables, state, inputs, y, rng):
    """The trainer's epoch, on one device or replicated over a mesh."""
    if mesh is not None:
        variables, state = jax.device_put((variables, state), parallel.replicated(mesh))
    spec = values_lib.EpochSpec(model, True, tx, BATCH, 0.1, mesh)
    return values_lib._train_epoch(spec, variables, state, inputs, y, rng)


@pytest.mark.parametrize("mesh", [None, 8], ids=["one-device", "data8"])
@pytest.mark.parametrize("optimiser", list(OPTIMISERS))
@pytest.mark.parametrize("mode, hard", UNLEARNING)
def test_carried_optimiser_state_never_moves_masked_pairs(
    fitted, pretrained, mesh, optimiser, mode, hard
):
    """The state from before unlearning (Adam moments, momentum) and weight decay are masked."""
    model, _, (x, y), _ = fitted
    tx, variables, state = pretrained[optimiser]
    forgotten = _forget_class_0(model, variables, (x, y), mode, hard)
    if hard:
        masked = np.asarray(masked_pairs(forgotten))
        assert not np.asarray(forgotten["params"]["values"])[masked].any()
    inputs = training.compute_codes(model, forgotten, x)
    mesh = None if mesh is None else parallel.data_mesh(mesh)
    params = _epoch(mesh, model, tx, forgotten, state, inputs, jnp.asarray(y), jax.random.key(3))[0]
    _check_masked_unchanged(forgotten, {**forgotten, "params": params})


# The trainer's settings: one device, a mesh, per-epoch checkpoints.
SETTINGS = {
    "one-device": lambda tmp_path: {},
    "data8": lambda tmp_path: {"mesh": parallel.data_mesh(8)},
    "checkpointed": lambda tmp_path: {"checkpoint_dir": tmp_path},
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("mode, hard", UNLEARNING)
def test_adamw_after_unlearning_never_moves_masked_pairs(
    fitted, pretrained, setting, mode, hard, tmp_path
):
    model, _, (x, y), _ = fitted
    forgotten = _forget_class_0(model, pretrained["adam"][1], (x, y), mode, hard)
    config = training.ValueTrainConfig(
        epochs=2, batch_size=BATCH, optimizer="adam", learning_rate=0.05, weight_decay=0.1
    )
    kwargs = dict(key=jax.random.key(4), config=config, progress=False)
    trained, _ = training.train_values(
        model, forgotten, x, y, **kwargs, **SETTINGS[setting](tmp_path)
    )
    _check_masked_unchanged(forgotten, trained)


@pytest.mark.parametrize("weight_decay", [-0.1, float("nan"), float("inf")])
def test_bad_weight_decay(weight_decay):
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        training.ValueTrainConfig(weight_decay=weight_decay)


def _class_accuracy(model, variables, data, cls):
    x, y = data
    keep = y == cls
    return float(np.mean(np.asarray(model.apply(variables, x[keep])).argmax(-1) == cls))


def test_training_on_the_forgotten_class_relearns_it_through_other_keys(fitted):
    """Masked pairs stay put, but data of the forgotten class retrains the keys it falls back to:
    continued training must use retained data only."""
    model, variables, (x, y), test = fitted
    config = training.ValueTrainConfig(epochs=2, batch_size=BATCH)
    trained, _ = training.train_values(
        model, variables, x, y, key=jax.random.key(5), config=config, progress=False
    )
    forgotten = _forget_class_0(model, trained, (x, y), "search", True)
    assert _class_accuracy(model, trained, test, 0) > 0.95
    assert _class_accuracy(model, forgotten, test, 0) < 0.2
    retain = y != 0
    on_retain, _ = training.train_values(
        model, forgotten, x[retain], y[retain], key=jax.random.key(6), config=config, progress=False
    )
    on_all, _ = training.train_values(
        model, forgotten, x, y, key=jax.random.key(6), config=config, progress=False
    )
    for after in (on_retain, on_all):
        _check_masked_unchanged(forgotten, after)
    assert _class_accuracy(model, on_retain, test, 0) < 0.2
    assert _class_accuracy(model, on_all, test, 0) > 0.9
