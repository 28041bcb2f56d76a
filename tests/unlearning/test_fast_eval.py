"""Codes after masking, from a ranking computed once, equal a fresh nearest-key search."""

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkvb_jax import DKVB, DKVBConfig
from dkvb_jax.unlearning import (
    apply_selection,
    codes_under_mask,
    params_variant_outputs,
    ranked_codes,
    variant_outputs,
    variant_predictions,
)


@functools.partial(jax.jit, static_argnums=0)
def _codes(model, variables, x):
    return model.apply(variables, x, method=DKVB.codes)


@pytest.fixture(scope="module", params=[1, 2], ids=["top1", "top2"])
def setup(request):
    cfg = DKVBConfig(
        embed_dim=8, num_classes=3, num_codebooks=3, num_keys=12, key_dim=2, top_k=request.param
    )
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


def _loss(logits, y):
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    return -np.take_along_axis(np.asarray(logp), y[:, None], -1)[:, 0]


# depth 3 ranks once and gathers; depth 40 (> 32) searches each variant directly.
@pytest.mark.parametrize("depth", [3, 40])
def test_variant_outputs_equal_each_masked_model(setup, depth):
    model, v, x = setup
    rng = np.random.default_rng(1)
    v = {
        **v,
        "params": jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), v["params"]),
    }
    y = rng.integers(0, 3, size=x.shape[0])
    masked = min(depth - model.config.top_k, 2)
    sels = np.zeros((4, 3, 12), bool)
    for s in sels[1:]:
        for c in range(3):
            s[c, rng.choice(12, masked, replace=False)] = True
    pred, loss = variant_outputs(model, v, sels, x, y, depth)
    assert pred.shape == loss.shape == (x.shape[0], 4)
    for i, sel in enumerate(sels):
        logits = model.apply(apply_selection(v, sel), x)
        np.testing.assert_array_equal(pred[:, i], np.argmax(logits, -1))
        np.testing.assert_allclose(loss[:, i], _loss(logits, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(variant_predictions(model, v, sels, x, depth), pred)


def test_params_variant_outputs_equal_each_model(setup):
    model, v, x = setup
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=x.shape[0])
    stacked = jax.tree.map(lambda a: rng.normal(size=(3, *a.shape)).astype(a.dtype), v["params"])
    # A budget of one row per batch exercises the padding of the last batch.
    pred, loss = params_variant_outputs(model, v, stacked, x, y, memory_mb=1e-6)
    for i in range(3):
        p = jax.tree.map(lambda a, i=i: a[i], stacked)
        logits = model.apply({**v, "params": p}, x)
        np.testing.assert_array_equal(pred[:, i], np.argmax(logits, -1))
        np.testing.assert_allclose(loss[:, i], _loss(logits, y), rtol=1e-5, atol=1e-6)


def test_variant_outputs_reject_bad_labels(setup):
    model, v, x = setup
    with pytest.raises(ValueError, match="label"):
        variant_outputs(model, v, np.zeros((1, 3, 12), bool), x, np.full(x.shape[0], 7), 3)
    with pytest.raises(ValueError, match="label"):
        params_variant_outputs(
            model, v, jax.tree.map(lambda a: a[None], v["params"]), x, np.zeros(3, int)
        )
