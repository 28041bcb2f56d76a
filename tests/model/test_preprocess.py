"""Preprocessing folded into the projection reads raw inputs exactly as the unfolded model reads
preprocessed ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import DKVB
from dkvb_jax.model.preprocess import apply_affine, fit_affine, fold_affine

CFG = DKVBConfig(embed_dim=6, num_classes=3, num_codebooks=4, num_keys=16, key_dim=3)


def _data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(6, 6)) * rng.uniform(0.1, 5.0, size=6)
    return (rng.normal(size=(n, 6)) @ mix + rng.normal(size=6) * 10).astype(np.float32)


@pytest.mark.parametrize("kind", ["none", "standardize", "pca_whiten"])
def test_fit_affine_moments(kind):
    x = _data()
    z = apply_affine(x, fit_affine(x, kind))
    if kind == "none":
        np.testing.assert_allclose(z, x, rtol=1e-6)
        return
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    cov = np.cov(z, rowvar=False, bias=True)
    np.testing.assert_allclose(np.diag(cov), 1.0, rtol=1e-2)
    if kind == "pca_whiten":
        np.testing.assert_allclose(cov, np.eye(6), atol=2e-2)


@pytest.mark.parametrize("kind", ["standardize", "pca_whiten"])
def test_fold_equals_preprocessing_inputs(kind):
    x = _data(1)
    affine = fit_affine(x, kind)
    model = DKVB(CFG)
    v = model.init(jax.random.key(0), jnp.zeros((1, 6)))
    z = apply_affine(x, affine)
    # Keys placed on preprocessed queries, so the nearest-key search is non-trivial.
    q = model.apply(v, jnp.asarray(z[:16]), method=DKVB.queries)
    v = {**v, "frozen": {**v["frozen"], "keys": jnp.swapaxes(q, 0, 1)}}
    folded = fold_affine(v, affine)
    idx_raw, _ = model.apply(folded, x, method=DKVB.codes)
    idx_pre, _ = model.apply(v, z, method=DKVB.codes)
    assert (np.asarray(idx_raw) == np.asarray(idx_pre)).mean() > 0.99  # float ties aside


@pytest.mark.parametrize(
    "x, kind, match",
    [
        (np.zeros((1, 3)), "standardize", "n >= 2"),
        (np.full((4, 3), np.nan), "standardize", "non-finite"),
        (np.zeros((4, 3)), "zca", "kind"),
    ],
)
def test_fit_affine_bad_input(x, kind, match):
    with pytest.raises(ValueError, match=match):
        fit_affine(x, kind)


def test_fold_needs_projection():
    model = DKVB(CFG.replace(splitter="chunk", num_codebooks=2, key_dim=3))
    v = model.init(jax.random.key(0), jnp.zeros((1, 6)))
    with pytest.raises(ValueError, match="random_projection"):
        fold_affine(v, fit_affine(_data(), "standardize"))
