"""Helpers shared by the unlearning tests."""

import functools

import jax
import numpy as np


@functools.partial(jax.jit, static_argnums=0)
def _predict(model, variables, x):
    return model.apply(variables, x).argmax(-1)


def accuracy(model, variables, x, y, rows=None) -> float:
    """Accuracy through the full model (a fresh nearest-key search), optionally on `rows`."""
    ok = np.asarray(_predict(model, variables, x)) == y
    return float(ok[rows].mean() if rows is not None else ok.mean())


def predictions(model, variables, x) -> np.ndarray:
    return np.asarray(_predict(model, variables, x))


def np_top_n(counts: np.ndarray, n: int) -> np.ndarray:
    """Brute-force reference of mask_top_n: per row, the n largest positive counts, ties to
    the lower index."""
    out = np.zeros(counts.shape, bool)
    for idx in np.ndindex(counts.shape[:-1]):
        row = counts[idx]
        order = sorted(range(row.size), key=lambda k: (-row[k], k))[:n]
        for k in order:
            out[idx + (k,)] = row[k] > 0
    return out
