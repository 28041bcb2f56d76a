"""Codes given to fit_exact / add_examples must name real keys; -1 is the only invalid marker."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax.config import DKVBConfig
from dkvb_jax.exact import add_examples, fit_exact
from dkvb_jax.model import DKVB

C, K, Y, TOPK, D = 2, 8, 3, 2, 6


@pytest.fixture(scope="module")
def model_and_vars():
    model = DKVB(
        DKVBConfig(embed_dim=D, num_classes=Y, num_codebooks=C, num_keys=K, key_dim=3, top_k=TOPK)
    )
    return model, model.init(jax.random.key(0), jnp.zeros((2, D)))


def _codes(seed=0, n=12):
    rng = np.random.default_rng(seed)
    return rng.integers(0, K, (n, C, TOPK)).astype(np.int32), rng.integers(0, Y, n)


def _set(codes, value, dtype=np.int32):
    out = codes.astype(dtype)
    out[3, 1, 0] = value
    return out


def _pair(codes, value, valid=True):
    idx, ok = codes.copy(), np.ones(codes.shape, bool)
    idx[3, 1, 0], ok[3, 1, 0] = value, valid
    return idx, ok


BAD = {
    "negative index other than -1": (lambda c: _set(c, -2), "holds the index -2"),
    "-1 marked valid": (lambda c: _pair(c, -1), "negative indices are marked valid"),
    "index past num_keys marked valid": (lambda c: _pair(c, K), r"reach 8, past the last key"),
    "int64 index that wraps in int32": (lambda c: _set(c, 2**32 + 3, np.int64), "< num_keys=8"),
    "valid of another shape": (lambda c: (c, np.ones(c.shape[:2] + (1,), bool)), "same shape"),
    "int valid flags": (lambda c: (c, np.ones(c.shape, np.int32)), "valid must be a bool"),
}


@pytest.mark.parametrize("entry", ["fit_exact", "add_examples"])
@pytest.mark.parametrize("make,match", BAD.values(), ids=BAD.keys())
def test_codes_out_of_range_are_refused(model_and_vars, entry, make, match):
    model, v = model_and_vars
    codes, labels = _codes()
    bad = make(codes)
    with pytest.raises((ValueError, TypeError), match=match):
        if entry == "fit_exact":
            fit_exact(model, v, bad, labels)
        else:
            v0, s0 = fit_exact(model, v, *_codes(1))
            add_examples(model, v0, s0, bad, labels, np.arange(100, 112))


def test_index_of_an_invalid_entry_is_ignored(model_and_vars):
    model, v = model_and_vars
    codes, labels = _codes()
    marked = _set(codes, -1)
    a, sa = fit_exact(model, v, marked, labels)
    b, sb = fit_exact(model, v, _pair(codes, 99, valid=False), labels)
    np.testing.assert_array_equal(a["params"]["values"], b["params"]["values"])
    np.testing.assert_array_equal(sa.codes, sb.codes)
