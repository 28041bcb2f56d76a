"""Input preprocessing for the random-projection splitter, folded into the frozen variables.

A fixed affine map of the embeddings, ``x -> (x - mean) @ matrix``, fitted on train embeddings
(per-dimension standardisation or PCA whitening, unlabelled; or the discriminant subspace of
linear discriminant analysis, labelled), can be applied inside the model at no cost: the queries of the preprocessed input are

    ((x - mean) @ matrix) @ P = x @ (matrix @ P) - mean @ matrix @ P,

so storing the projection ``matrix @ P`` and shifting every key by ``mean @ matrix @ P`` gives a
model that reads raw embeddings and finds exactly the same nearest keys. Folding before key
initialisation is simpler still: k-means is translation-equivariant, so keys fitted on
``x @ (matrix @ P)`` absorb the shift by themselves. Either way no new model state is needed.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp
import numpy as np

Kind = Literal["none", "standardize", "pca_whiten", "lda"]
KINDS: tuple[str, ...] = ("none", "standardize", "pca_whiten", "lda")


class Affine(NamedTuple):
    """The map ``x -> (x - mean) @ matrix``: mean `[embed_dim]`, matrix `[embed_dim, embed_dim]`.

    A 1-D matrix `[embed_dim]` is the diagonal of a diagonal one, ``x -> (x - mean) * matrix``
    (per-dimension standardisation is ``Affine(mean, 1 / std)``).
    """

    mean: np.ndarray
    matrix: np.ndarray


def fit_affine(
    x: np.ndarray,
    kind: Kind = "standardize",
    *,
    labels: np.ndarray | None = None,
    eps: float = 1e-3,
) -> Affine:
    """Fits the preprocessing on train embeddings `[n, embed_dim]`.

    Args:
      x: embeddings `[n, embed_dim]`, n >= 2.
      kind: ``none`` (identity), ``standardize`` (per-dimension z-score; constant dimensions are
        left unscaled), ``pca_whiten`` (rotate to the principal axes and scale each to unit
        variance) or ``lda`` (keep only the `classes - 1` discriminant directions, scaled to unit
        within-class variance; needs `labels`). With ``lda`` every codebook sees a random
        projection of the same class-separating subspace, so each key's cell is nearly
        class-pure: a class's evidence sits in its own keys, which UvA can mask without
        touching the keys of other classes (README, issue 10).
      labels: int class ids `[n]`, for ``lda`` only.
      eps: whitening floor (``pca_whiten``), relative to the largest eigenvalue, so
        near-constant directions are not blown up into noise. ``lda`` shrinks its within-class
        covariance by Ledoit-Wolf instead.

    Returns:
      The fitted :class:`Affine` (float32); for ``lda`` a rank `classes - 1` matrix whose first
      columns hold the discriminant directions.
    """
    if kind not in KINDS:
        raise ValueError(f"preprocessing kind must be one of {KINDS}, got {kind!r}.")
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"fit_affine needs embeddings [n >= 2, embed_dim], got shape {x.shape}; pass the "
            "train embeddings."
        )
    if not np.isfinite(x).all():
        raise ValueError("fit_affine got non-finite embeddings (NaN or inf); clean them first.")
    if (labels is not None) != (kind == "lda"):
        raise ValueError(
            "fit_affine: kind='lda' needs labels= (the class of every row); the other kinds are "
            f"unsupervised and take no labels (got kind={kind!r})."
        )
    dim = x.shape[1]
    mean = x.mean(0)
    if kind == "none":
        return Affine(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32))
    if kind == "standardize":
        sd = x.std(0)
        sd = np.where(sd > 1e-6 * max(sd.max(), 1e-30), sd, 1.0)
        return Affine(mean.astype(np.float32), np.diag(1.0 / sd).astype(np.float32))
    if kind == "lda":
        return Affine(mean.astype(np.float32), _lda_matrix(x, labels).astype(np.float32))
    eigval, eigvec = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    eigval = np.maximum(eigval, eps * max(eigval.max(), 1e-30))
    return Affine(mean.astype(np.float32), (eigvec / np.sqrt(eigval)).astype(np.float32))


def _lda_matrix(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`[embed_dim, embed_dim]`: the discriminant directions `v` (``v.T @ S_w @ v = I``, by
    decreasing between-class variance) in the first `classes - 1` columns, zeros elsewhere.

    scikit-learn's eigen solver with Ledoit-Wolf shrinkage of the within-class covariance: on
    a 2,000-row sample of 1,024-d MobileNetV1 embeddings it keeps 74% nearest-class-mean test
    accuracy in the discriminant space where a fixed ridge overfits to 64%.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"fit_affine: labels must be int class ids [{x.shape[0]}] (one per row of x), got "
            f"{labels.dtype} {labels.shape}."
        )
    classes = np.unique(labels)
    if len(classes) < 2 or len(classes) > x.shape[1]:
        raise ValueError(
            f"fit_affine: lda needs 2 to embed_dim={x.shape[1]} classes in labels, got "
            f"{len(classes)}."
        )
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x, labels)
    matrix = np.zeros((x.shape[1], x.shape[1]))
    matrix[:, : len(classes) - 1] = lda.scalings_[:, : len(classes) - 1]
    return matrix


def apply_affine(x: np.ndarray, affine: Affine) -> np.ndarray:
    """Preprocessed embeddings ``(x - mean) @ matrix``, `[n, embed_dim]`."""
    centred = np.asarray(x, np.float32) - affine.mean
    return centred * affine.matrix if np.ndim(affine.matrix) == 1 else centred @ affine.matrix


def fold_affine(variables: dict, affine: Affine) -> dict:
    """Variables that read raw `x` exactly as `variables` read ``apply_affine(x, affine)``.

    Only ``frozen/projection`` and ``frozen/keys`` change (see the module docstring); the
    model needs the ``random_projection`` splitter.
    """
    frozen = variables.get("frozen", {})
    if "projection" not in frozen:
        raise ValueError(
            "fold_affine needs a model with the random_projection splitter (a frozen "
            "'projection' to fold the preprocessing into); apply_affine to the inputs instead."
        )
    proj = jnp.asarray(frozen["projection"])  # [embed_dim, codebooks, key_dim]
    matrix, dim = jnp.asarray(affine.matrix), proj.shape[0]
    mean = jnp.asarray(affine.mean)
    if matrix.shape == (dim,):  # diagonal: both products elementwise, then one contraction
        new_proj = proj * matrix[:, None, None]
        shift = jnp.einsum("D,Dcd->cd", mean * matrix, proj, precision="highest")
    elif matrix.shape == (dim, dim):
        new_proj = jnp.einsum("De,ecd->Dcd", matrix, proj, precision="highest")
        shift = jnp.einsum("D,Dcd->cd", mean, new_proj, precision="highest")
    else:
        raise ValueError(
            f"affine matrix has shape {matrix.shape}, expected {(dim, dim)} (or its diagonal "
            f"{(dim,)}) for a model with embed_dim={dim}."
        )
    new_frozen = {**frozen, "projection": new_proj, "keys": frozen["keys"] + shift[:, None, :]}
    return {**variables, "frozen": new_frozen}
