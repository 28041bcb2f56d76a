"""Every kind of bad input gets a clear error naming the argument."""

import jax
import numpy as np
import pytest

from dkvb_jax import DKVB
from dkvb_jax.unlearning import (
    RetainAware,
    every_class_metrics,
    forget_classes,
    forget_examples,
    unlearn_via_activations,
    unlearn_via_examples,
)

CASES = {
    "class out of range": (
        lambda t: forget_classes(t.model, t.v, 5, 4, usage=t.usage), ValueError,
        r"\[5\], outside the model's classes \[0, 5\)"),
    "negative class": (
        lambda t: forget_classes(t.model, t.v, [-1], 4, usage=t.usage), ValueError, "outside"),
    "every class": (
        lambda t: forget_classes(t.model, t.v, range(5), 4, usage=t.usage), ValueError,
        "every one of the 5 classes"),
    "empty classes": (
        lambda t: forget_classes(t.model, t.v, [], 4, usage=t.usage), ValueError, "is empty"),
    "empty forget set": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x[:0]), ValueError, "empty"),
    "empty examples": (
        lambda t: forget_examples(t.model, t.v, [], codes=t.codes), ValueError, "is empty"),
    "example id out of range": (
        lambda t: forget_examples(t.model, t.v, [1200], codes=t.codes), ValueError,
        r"\[0, 1200\)"),
    "n larger than num_keys": (
        lambda t: unlearn_via_activations(t.model, t.v, 65, usage=t.usage, classes=1), ValueError,
        r"n_a=65 is out of range.*num_keys=64"),
    "n zero": (
        lambda t: forget_classes(t.model, t.v, 1, 0, usage=t.usage), ValueError, "n_a=0"),
    "n not int": (
        lambda t: forget_classes(t.model, t.v, 1, 2.5, usage=t.usage), TypeError, "n_a must be"),
    "n_e larger than forget set": (
        lambda t: unlearn_via_examples(t.model, t.v, t.x[:5], n_e=6), ValueError, "n_e=6"),
    "histogram wrong shape": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage[:, :8]), ValueError,
        r"usage must be a per-class usage histogram of shape.*\(5, 16, 64\)"),
    "histogram not per class": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage.sum(0)), ValueError,
        "per-class usage histogram"),
    "variables of another configuration": (
        lambda t: forget_classes(
            DKVB(t.model.config.replace(num_keys=32)), t.v, 1, 4, usage=t.usage),
        ValueError, "another configuration"),
    "not variables": (
        lambda t: forget_classes(t.model, {"params": {}}, 1, 4, usage=t.usage), TypeError,
        "collections 'params', 'frozen' and 'mask'"),
    "wrong embedding dim": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x[:, :8]), ValueError,
        "embed_dim=32"),
    "both sources": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x, usage=t.usage),
        ValueError, "exactly one of forget_x or usage"),
    "usage without classes": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, usage=t.usage), ValueError,
        "forget classes"),
    "retain-aware without retain data": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x,
                                          retain_aware=RetainAware()),
        ValueError, "needs retain_x"),
    "bad mode": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, mode="zero"), ValueError,
        "mode must be one of"),
    "rekey without hard": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, rekey="far"), ValueError,
        "pass hard=True"),
    "random rekey without rng": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, hard=True, rekey="random"),
        ValueError, "needs rng"),
    "vmapped metrics with a histogram of the wrong shape": (
        lambda t: every_class_metrics(t.model, t.v, t.usage[:3], 4, t.xt, t.yt), ValueError,
        "per-class usage histogram"),
    "bad retain ratio": (lambda t: RetainAware(ratio=-1.0), ValueError, "RetainAware.ratio"),
}  # fmt: skip


@pytest.mark.parametrize("call,err,match", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused_clearly(trained, call, err, match):
    with pytest.raises(err, match=match):
        call(trained)


def test_refused_calls_leave_variables_alone(trained):
    before = jax.tree.map(np.copy, trained.v)
    with pytest.raises(ValueError):
        forget_classes(trained.model, trained.v, 9, 4, usage=trained.usage)
    jax.tree.map(np.testing.assert_array_equal, trained.v, before)
