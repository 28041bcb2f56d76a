"""Input preprocessing for the random-projection splitter, folded into the frozen variables.

A fixed affine map of the embeddings, ``x -> (x - mean) @ matrix``, fitted on unlabelled train
embeddings (per-dimension standardisation or PCA whitening), can be applied inside the model at
no cost: the queries of the preprocessed input are

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

Kind = Literal["none", "standardize", "pca_whiten"]
KINDS: tuple[str, ...] = ("none", "standardize", "pca_whiten")


class Affine(NamedTuple):
    """The map ``x -> (x - mean) @ matrix``: mean `[embed_dim]`, matrix `[embed_dim, embed_dim]`."""

    mean: np.ndarray
    matrix: np.ndarray


def fit_affine(x: np.ndarray, kind: Kind = "standardize", *, eps: float = 1e-3) -> Affine:
    """Fits the preprocessing on unlabelled embeddings `[n, embed_dim]`.

    Args:
      x: embeddings `[n, embed_dim]`, n >= 2.
      kind: ``none`` (identity), ``standardize`` (per-dimension z-score; constant dimensions are
        left unscaled) or ``pca_whiten`` (rotate to the principal axes and scale each to unit
        variance).
      eps: whitening floor, relative to the largest eigenvalue, so near-constant directions are
        not blown up into noise.

    Returns:
      The fitted :class:`Affine` (float32).
    """
    if kind not in KINDS:
        raise ValueError(f"preprocessing kind must be one of {KINDS}, got {kind!r}.")
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"fit_affine needs embeddings [n >= 2, embed_dim], got shape {x.shape}; pass the "
            "unlabelled train embeddings."
        )
    if not np.isfinite(x).all():
        raise ValueError("fit_affine got non-finite embeddings (NaN or inf); clean them first.")
    dim = x.shape[1]
    mean = x.mean(0)
    if kind == "none":
        return Affine(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32))
    if kind == "standardize":
        sd = x.std(0)
        sd = np.where(sd > 1e-6 * max(sd.max(), 1e-30), sd, 1.0)
        return Affine(mean.astype(np.float32), np.diag(1.0 / sd).astype(np.float32))
    eigval, eigvec = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    eigval = np.maximum(eigval, eps * max(eigval.max(), 1e-30))
    return Affine(mean.astype(np.float32), (eigvec / np.sqrt(eigval)).astype(np.float32))


def apply_affine(x: np.ndarray, affine: Affine) -> np.ndarray:
    """Preprocessed embeddings ``(x - mean) @ matrix``, `[n, embed_dim]`."""
    return (np.asarray(x, np.float32) - affine.mean) @ affine.matrix


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
    matrix = jnp.asarray(affine.matrix)
    if matrix.shape != (proj.shape[0], proj.shape[0]):
        raise ValueError(
            f"affine matrix has shape {matrix.shape}, expected {(proj.shape[0],) * 2} for a model "
            f"with embed_dim={proj.shape[0]}."
        )
    new_proj = jnp.einsum("De,ecd->Dcd", matrix, proj, precision="highest")
    shift = jnp.einsum("D,Dcd->cd", jnp.asarray(affine.mean), new_proj, precision="highest")
    new_frozen = {**frozen, "projection": new_proj, "keys": frozen["keys"] + shift[:, None, :]}
    return {**variables, "frozen": new_frozen}
