"""Accuracy, per-class accuracy, losses and splits against NumPy brute force."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkvb_jax.evaluation import (
    accuracy,
    deltas,
    per_class_accuracy,
    per_example_loss,
)
from dkvb_jax.evaluation.splits import check_label_space, class_unlearning_data

W = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)


def apply_fn(v, x):
    return x @ v["params"]["w"]


VARS = {"params": {"w": jnp.asarray(W)}}


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 23), batch_size=st.sampled_from([4, 7, 64]), seed=st.integers(0, 10))
def test_accuracy_and_per_class_match_numpy(n, batch_size, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    correct = (x @ W).argmax(-1) == y
    assert accuracy(apply_fn, VARS, x, y, batch_size=batch_size) == pytest.approx(
        correct.mean(), abs=1e-6
    )
    per_class = per_class_accuracy(apply_fn, VARS, x, y, batch_size=batch_size)
    assert per_class == pytest.approx({int(c): correct[y == c].mean() for c in np.unique(y)})
    z = x @ W  # the batched, padded logits behind every metric
    np.testing.assert_allclose(
        per_example_loss(apply_fn, VARS, x, y, batch_size=batch_size),
        np.log(np.exp(z).sum(-1)) - z[np.arange(n), y],
        rtol=1e-5,
        atol=1e-5,
    )


def test_per_example_loss_is_cross_entropy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 5)).astype(np.float32), rng.integers(0, 3, 9).astype(np.int32)
    z = x @ W
    expected = np.log(np.exp(z).sum(-1)) - z[np.arange(9), y]
    np.testing.assert_allclose(
        per_example_loss(apply_fn, VARS, x, y, batch_size=4), expected, rtol=1e-4
    )


def test_per_example_loss_compiles_once_per_shape(caplog):
    # Membership inference calls it for every row of a results table: a compilation per call
    # was most of its cost.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 5)).astype(np.float32), rng.integers(0, 3, 9).astype(np.int32)
    per_example_loss(apply_fn, VARS, x, y, batch_size=4)
    other = {"params": {"w": jnp.asarray(W[::-1].copy())}}  # other values, same shapes
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
        per_example_loss(apply_fn, other, x[::-1].copy(), y, batch_size=4)
    compiled = [r.getMessage() for r in caplog.records if "XLA compilation" in r.getMessage()]
    assert not compiled, compiled


def test_deltas():
    assert deltas({"a": 0.5, "b": 0.9, "c": 1.0}, {"a": 0.75, "b": 0.9}) == {"a": -0.25, "b": 0.0}


def test_class_split():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 2, 1, 0, 2])
    d = class_unlearning_data(x, y, [1], val_x=x, val_y=y)
    assert d.forget_y.tolist() == [1, 1] and d.retain_y.tolist() == [0, 2, 0, 2]
    assert d.val_forget_x.shape == (2, 2) and d.retain_y.dtype == jnp.int32


@pytest.mark.parametrize(
    "classes, y, match",
    [
        (5, [0, 1, 2], r"forget class\(es\) \[5\] have no example"),
        ([0, 1], [0, 1, 0], "retain set would be empty"),
        ([], [0, 1], "forget_classes is empty"),
    ],
)
def test_class_split_errors(classes, y, match):
    with pytest.raises(ValueError, match=match):
        class_unlearning_data(np.zeros((len(y), 2), np.float32), np.asarray(y), classes)


@pytest.mark.parametrize(
    "x, y, error, match",
    [
        (np.zeros((0, 5), np.float32), np.zeros(0, np.int32), ValueError, "empty"),
        (np.zeros((3, 5), np.float32), np.zeros(2, np.int32), ValueError, r"\[n\] labels"),
        (np.zeros(5, np.float32), np.zeros(5, np.int32), ValueError, r"\[n, dim\]"),
        (np.zeros((3, 5), np.float32), np.zeros(3, np.float32), TypeError, "integer class labels"),
        (np.zeros((3, 5), np.int32), np.zeros(3, np.int32), TypeError, "floating point"),
    ],
)
def test_accuracy_bad_input(x, y, error, match):
    with pytest.raises(error, match=match):
        accuracy(apply_fn, VARS, x, y)


def test_label_space_mismatch():
    with pytest.raises(ValueError, match="model outputs 3 logits"):
        check_label_space(apply_fn, VARS, jnp.zeros((2, 5)), jnp.array([0, 3]))
    assert check_label_space(apply_fn, VARS, jnp.zeros((2, 5)), jnp.array([0, 2])) == 3
