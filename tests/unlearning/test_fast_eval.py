"""Codes after masking, from a ranking computed once, equal a fresh nearest-key search."""

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkvb_jax import DKVB, DKVBConfig
from dkvb_jax.unlearning import apply_selection, codes_under_mask, ranked_codes


@functools.partial(jax.jit, static_argnums=0)
def _codes(model, variables, x):
    return model.apply(variables, x, method=DKVB.codes)


@pytest.fixture(scope="module", params=[1, 2], ids=["top1", "top2"])
def setup(request):
    cfg = DKVBConfig(embed_dim=8, num_classes=3, num_codebooks=3, num_keys=12, key_dim=2,
                     top_k=request.param)  # fmt: skip
    model = DKVB(cfg)
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    v = model.init(jax.random.key(0), x[:1])
    return model, v, x


# Few distinct mask counts: each one is a new ranking depth, hence a new compilation.
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), masked=st.sampled_from([0, 1, 5, 11, 12]))
def test_codes_under_mask_equal_fresh_lookup(setup, seed, masked):
    model, v, x = setup
    rng = np.random.default_rng(seed)
    sel = np.zeros((3, 12), bool)
    for c in range(3):  # exactly `masked` keys per codebook (12: the codebook is switched off)
        sel[c, rng.choice(12, masked, replace=False)] = True
    ranked = ranked_codes(model, v, x, masked + model.config.top_k)
    idx, valid = codes_under_mask(*ranked, sel, model.config.top_k)
    ref_idx, ref_valid = _codes(model, apply_selection(v, sel), x)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_array_equal(idx, ref_idx)
