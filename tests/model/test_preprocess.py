"""Preprocessing folded into the projection reads raw inputs exactly as the unfolded model reads
preprocessed ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import DKVB
from dkvb_jax.model.preprocess import Affine, apply_affine, fit_affine, fold_affine

CFG = DKVBConfig(embed_dim=6, num_classes=3, num_codebooks=4, num_keys=16, key_dim=3)


def _data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(6, 6)) * rng.uniform(0.1, 5.0, size=6)
    return (rng.normal(size=(n, 6)) @ mix + rng.normal(size=6) * 10).astype(np.float32)


def _labelled(seed=0, n=300, classes=3):
    """Correlated classes with shifted means: `x [n, 6]`, `y [n]`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, 6)) * 3
    return (_data(seed, n) * 0.3 + centres[y]).astype(np.float32), y


def _fit(x, kind, y=None):
    if kind == "diagonal":  # standardisation given by its diagonal, as fit_dkvb folds it
        full = fit_affine(x, "standardize")
        return Affine(full.mean, np.diag(full.matrix).copy())
    return fit_affine(x, kind, labels=y if kind == "lda" else None)


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


def test_lda_matches_generalised_eigenproblem():
    """Against scipy's S_b v = lambda S_w v from the raw scatter matrices: with many rows per
    dimension the shrinkage is negligible, so the first columns satisfy v.T S_w v = I and
    v.T S_b v = diag(lambda) by decreasing lambda; the others are zero."""
    x, y = _labelled(n=20000)
    matrix = fit_affine(x, "lda", labels=y).matrix.astype(np.float64)
    x = x.astype(np.float64)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    within = x - means[y]
    s_w = within.T @ within / len(x)
    s_b = np.cov(means[y], rowvar=False, bias=True)  # class means weighted by class size
    expected = scipy.linalg.eigh(s_b, s_w, eigvals_only=True)[::-1][:2]
    v = matrix[:, :2]
    np.testing.assert_allclose(v.T @ s_w @ v, np.eye(2), atol=2e-2)
    np.testing.assert_allclose(v.T @ s_b @ v, np.diag(expected), rtol=2e-2, atol=2e-2 * expected[0])
    np.testing.assert_array_equal(matrix[:, 2:], 0.0)


def test_lda_shrinkage_keeps_few_rows_separable():
    """Fewer rows than twice the dimension: the shrunk within-class covariance still gives
    directions that separate held-out rows (a plain inverse would fit the noise)."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 64)) * 0.6
    y, yt = rng.integers(0, 4, 100), rng.integers(0, 4, 2000)
    x, xt = centres[y] + rng.normal(size=(100, 64)), centres[yt] + rng.normal(size=(2000, 64))
    affine = fit_affine(x, "lda", labels=y)
    z, zt = apply_affine(x, affine)[:, :3], apply_affine(xt, affine)[:, :3]
    means = np.stack([z[y == c].mean(0) for c in range(4)])
    pred = np.argmin(((zt[:, None] - means) ** 2).sum(-1), axis=1)
    assert np.mean(pred == yt) > 0.98  # 0.94 without shrinkage


@pytest.mark.parametrize("kind", ["standardize", "diagonal", "pca_whiten", "lda"])
def test_fold_equals_preprocessing_inputs(kind):
    x, y = _labelled(1)
    affine = _fit(x, kind, y)
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


@pytest.mark.parametrize(
    "kind, labels, match",
    [
        ("lda", None, "needs labels"),
        ("standardize", np.zeros(300, int), "take no labels"),
        ("lda", np.zeros(300, int), "2 to embed_dim"),
        ("lda", np.zeros(299, int), r"labels must be int class ids \[300\]"),
        ("lda", np.zeros(300), "labels must be int"),
    ],
)
def test_fit_affine_bad_labels(kind, labels, match):
    with pytest.raises(ValueError, match=match):
        fit_affine(_labelled()[0], kind, labels=labels)


def test_diagonal_is_the_diagonal_matrix():
    x = _data()
    full, diagonal = _fit(x, "standardize"), _fit(x, "diagonal")
    assert diagonal.matrix.shape == (6,)
    np.testing.assert_allclose(apply_affine(x, diagonal), apply_affine(x, full), rtol=1e-6)
    v = DKVB(CFG).init(jax.random.key(0), jnp.zeros((1, 6)))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        fold_affine(v, diagonal),
        fold_affine(v, full),
    )
    with pytest.raises(ValueError, match=r"expected \(6, 6\) \(or its diagonal \(6,\)\)"):
        fold_affine(v, Affine(diagonal.mean, diagonal.matrix[:5]))


def test_fold_needs_projection():
    model = DKVB(CFG.replace(splitter="chunk", num_codebooks=2, key_dim=3))
    v = model.init(jax.random.key(0), jnp.zeros((1, 6)))
    with pytest.raises(ValueError, match="random_projection"):
        fold_affine(v, fit_affine(_data(), "standardize"))
