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
    sweep_uva,
    unlearn_via_activations,
    unlearn_via_examples,
)


def _usage_with(t, value, dtype=np.float32, where=(1, 0, 0)):
    usage = t.usage.astype(dtype)
    usage[where] = value
    return usage


def _codes_with(t, index, valid=True):
    """The training codes with example 0's first entry set to `index` (marked `valid`)."""
    idx, ok = np.array(t.codes[0]), np.array(t.codes[1])
    idx[0, 0, 0], ok[0, 0, 0] = index, valid
    return idx, ok


def _with_mask(t, dtype):
    return {**t.v, "mask": {**t.v["mask"], "search": t.v["mask"]["search"].astype(dtype)}}


CASES = {
    "class out of range": (
        lambda t: forget_classes(t.model, t.v, 5, 4, usage=t.usage),
        ValueError,
        r"\[5\], outside the model's classes \[0, 5\)",
    ),
    "negative class": (
        lambda t: forget_classes(t.model, t.v, [-1], 4, usage=t.usage),
        ValueError,
        "outside",
    ),
    "every class": (
        lambda t: forget_classes(t.model, t.v, range(5), 4, usage=t.usage),
        ValueError,
        "every one of the 5 classes",
    ),
    "empty classes": (
        lambda t: forget_classes(t.model, t.v, [], 4, usage=t.usage),
        ValueError,
        "is empty",
    ),
    "empty forget set": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x[:0]),
        ValueError,
        "empty",
    ),
    "empty examples": (
        lambda t: forget_examples(t.model, t.v, [], codes=t.codes),
        ValueError,
        "is empty",
    ),
    "example id out of range": (
        lambda t: forget_examples(t.model, t.v, [1200], codes=t.codes),
        ValueError,
        r"\[0, 1200\)",
    ),
    "n larger than num_keys": (
        lambda t: unlearn_via_activations(t.model, t.v, 65, usage=t.usage, classes=1),
        ValueError,
        r"n_a=65 is out of range.*num_keys=64",
    ),
    "n zero": (lambda t: forget_classes(t.model, t.v, 1, 0, usage=t.usage), ValueError, "n_a=0"),
    "n not int": (
        lambda t: forget_classes(t.model, t.v, 1, 2.5, usage=t.usage),
        TypeError,
        "n_a must be",
    ),
    "n_e larger than forget set": (
        lambda t: unlearn_via_examples(t.model, t.v, t.x[:5], n_e=6),
        ValueError,
        "n_e=6",
    ),
    "histogram wrong shape": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage[:, :8]),
        ValueError,
        r"usage must be a per-class usage histogram of shape.*\(5, 16, 64\)",
    ),
    "histogram not per class": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage.sum(0)),
        ValueError,
        "per-class usage histogram",
    ),
    "variables of another configuration": (
        lambda t: forget_classes(
            DKVB(t.model.config.replace(num_keys=32)), t.v, 1, 4, usage=t.usage
        ),
        ValueError,
        "another configuration",
    ),
    "not variables": (
        lambda t: forget_classes(t.model, {"params": {}}, 1, 4, usage=t.usage),
        TypeError,
        "collections 'params', 'frozen' and 'mask'",
    ),
    "wrong embedding dim": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x[:, :8]),
        ValueError,
        "embed_dim=32",
    ),
    "both sources": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, forget_x=t.x, usage=t.usage),
        ValueError,
        "exactly one of forget_x or usage",
    ),
    "usage without classes": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, usage=t.usage),
        ValueError,
        "forget classes",
    ),
    "retain-aware without retain data": (
        lambda t: unlearn_via_activations(
            t.model, t.v, 4, forget_x=t.x, retain_aware=RetainAware()
        ),
        ValueError,
        "needs retain_x",
    ),
    "bad mode": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, mode="zero"),
        ValueError,
        "mode must be one of",
    ),
    "rekey without hard": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, rekey="far"),
        ValueError,
        "pass hard=True",
    ),
    "random rekey without rng": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, hard=True, rekey="random"),
        ValueError,
        "needs rng",
    ),
    "vmapped metrics with a histogram of the wrong shape": (
        lambda t: every_class_metrics(t.model, t.v, t.usage[:3], 4, t.xt, t.yt),
        ValueError,
        "per-class usage histogram",
    ),
    "bad retain ratio": (lambda t: RetainAware(ratio=-1.0), ValueError, "RetainAware.ratio"),
    "n_e message counts the forget examples, not the keys": (
        lambda t: unlearn_via_examples(t.model, t.v, t.x[:5], n_e=6),
        ValueError,
        r"n_e=6 is out of range: it must lie in \[1, 5\]: there are 5 forget examples\.$",
    ),
    "histogram with NaN": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=_usage_with(t, np.nan)),
        ValueError,
        "usage contains 1 NaN or inf",
    ),
    "histogram with inf": (
        lambda t: unlearn_via_activations(t.model, t.v, 4, usage=_usage_with(t, np.inf), classes=1),
        ValueError,
        "usage contains 1 NaN or inf",
    ),
    "histogram with negative counts": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=_usage_with(t, -3, np.int32)),
        ValueError,
        r"usage contains 1 negative entries \(down to -3\)",
    ),
    "histogram with fractional counts": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=_usage_with(t, 2.5)),
        ValueError,
        r"usage contains 1 non-integer entries \(e.g. 2.5\)",
    ),
    "histogram of bools": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage > 0),
        TypeError,
        "usage must hold retrieval counts",
    ),
    "class without recorded usage": (
        lambda t: forget_classes(t.model, t.v, [1, 3], 4, usage=_usage_with(t, 0, where=1)),
        ValueError,
        r"usage records no retrievals for class\(es\) \[1\]",
    ),
    "sweep over a histogram with NaN": (
        lambda t: sweep_uva(t.model, t.v, _usage_with(t, np.nan), 1, t.xt, t.yt, [1]),
        ValueError,
        "usage contains 1 NaN",
    ),
    "code index past num_keys": (
        lambda t: unlearn_via_examples(t.model, t.v, codes=_codes_with(t, 64)),
        ValueError,
        r"codes: every valid index must be a key id in \[0, num_keys=64\).*reach 64",
    ),
    "negative code index marked valid": (
        lambda t: forget_examples(t.model, t.v, [0], codes=_codes_with(t, -1)),
        ValueError,
        "negative indices are marked valid",
    ),
    "retain codes out of range": (
        lambda t: unlearn_via_examples(
            t.model, t.v, t.x[:5], retain_codes=_codes_with(t, 99), retain_aware=RetainAware()
        ),
        ValueError,
        "retain_codes: every valid index",
    ),
    "float code indices": (
        lambda t: unlearn_via_examples(
            t.model, t.v, codes=(np.asarray(t.codes[0], np.float32), t.codes[1])
        ),
        TypeError,
        "codes: indices must be integer",
    ),
    "int valid flags": (
        lambda t: unlearn_via_examples(
            t.model, t.v, codes=(t.codes[0], np.asarray(t.codes[1], np.int32))
        ),
        TypeError,
        "codes: valid must be a bool array",
    ),
    "float mask leaf": (
        lambda t: forget_classes(t.model, _with_mask(t, np.float32), 1, 4, usage=t.usage),
        TypeError,
        r"variables\['mask'\]\['search'\] has dtype float32, but masks must be bool",
    ),
    "rng not a key": (
        lambda t: forget_classes(
            t.model, t.v, 1, 4, usage=t.usage, hard=True, rekey="random", rng=7
        ),
        TypeError,
        "rng must be a PRNG key",
    ),
    "eval_fn not callable": (
        lambda t: forget_classes(t.model, t.v, 1, 4, usage=t.usage, eval_fn={}),
        TypeError,
        "eval_fn must map variables",
    ),
}


@pytest.mark.parametrize("call,err,match", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused_clearly(trained, call, err, match):
    with pytest.raises(err, match=match):
        call(trained)


def test_refused_calls_leave_variables_alone(trained):
    before = jax.tree.map(np.copy, trained.v)
    with pytest.raises(ValueError):
        forget_classes(trained.model, trained.v, 9, 4, usage=trained.usage)
    jax.tree.map(np.testing.assert_array_equal, trained.v, before)
