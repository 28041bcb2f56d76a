"""From an :class:`ExperimentConfig` and a labelled training split to a fitted model.

One place decides which rows each part is fitted on, so the command line, the experiment
pipeline and the scripts record the same provenance: an optional stratified held-out split
fits the preprocessing and the keys, a random subset of the key data bounds k-means, and the
values see the remaining rows only.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import TYPE_CHECKING

import jax
import numpy as np

from dkvb_jax.experiment.fitting import FittedDKVB, fit_dkvb
from dkvb_jax.provenance import UNNAMED, Rows

if TYPE_CHECKING:
    from dkvb_jax.experiment.class_unlearning import ExperimentConfig


def key_data_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most `limit` random rows out of `n` (all rows for None)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def holdout_rows(y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random split of the rows of `y` into `n` held-out rows and the rest.

    Returns:
      Sorted int64 row indices: the held-out rows `[n]` and the remaining rows `[len(y) - n]`.
    """
    y = np.asarray(y)
    if not 0 < n < y.size:
        raise ValueError(
            f"the held-out split must hold between 1 and {y.size - 1} of the {y.size} training "
            f"rows, got {n}; change holdout_fraction."
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    # Largest-remainder apportionment: per-class shares sum to exactly n.
    share = counts * n / y.size
    take = np.floor(share).astype(int)
    take[np.argsort(share - take)[::-1][: n - take.sum()]] += 1
    held = np.concatenate(
        [
            rng.choice(np.flatnonzero(y == c), t, replace=False)
            for c, t in zip(classes, take, strict=True)
        ]
    )
    held = np.sort(held)
    return held, np.setdiff1d(np.arange(y.size), held)


@dataclasses.dataclass(frozen=True)
class Fit:
    """A model fitted from a config, and which training rows its values were fitted on.

    Attributes:
      fitted: the model with its provenance.
      rows: indices into the given training split of the rows the values saw `[n_d]` (all
        rows, or all but the held-out ones).
      holdout: indices of the held-out rows `[n_h]` (empty without a held-out split).
    """

    fitted: FittedDKVB
    rows: np.ndarray
    holdout: np.ndarray


def fit_from_config(
    config: ExperimentConfig,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    key: jax.Array | None = None,
    dataset: str | None = None,
    ids: np.ndarray | None = None,
    key_data: np.ndarray | None = None,
    key_rows: Rows | None = None,
    encoder: str | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    run_info: dict | None = None,
    progress: bool = True,
) -> Fit:
    """Fits the DKVB model `config` describes on the training split `(x, y)`.

    Args:
      config: the experiment settings (model, recipe, held-out split, key subset).
      x, y: training embeddings `[n, dim]` and int labels `[n]`.
      num_classes: label-space size.
      key: PRNG key of the fit (default ``jax.random.key(config.seed)``).
      dataset: row namespace of `(x, y)` (e.g. ``"cifar10/train"``), for the provenance.
      ids: row ids of `x` in `dataset` (default ``0..n-1``).
      key_data: unlabelled embeddings of another dataset for the keys (default: the held-out
        rows, or the training rows); at most ``config.key_max_examples`` random rows are used.
      key_rows: the rows `key_data` are; without them no removal is certified.
      encoder, checkpoint_dir, eval_data, run_info, progress: see :func:`fit_dkvb`.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    namespace = dataset or UNNAMED
    if config.holdout_fraction:
        held, rows = holdout_rows(y, round(config.holdout_fraction * len(y)), config.seed)
    else:
        held, rows = np.zeros((0,), np.int64), np.arange(len(x))
    if key_data is None:
        source = x[held] if held.size else x
        source_rows = Rows(namespace, ids[held] if held.size else ids)
    else:
        source, source_rows = np.asarray(key_data, np.float32), key_rows
    picked = key_data_rows(len(source), config.key_max_examples, config.seed)
    if source_rows is not None and source_rows.ids is not None:
        source_rows = dataclasses.replace(source_rows, ids=source_rows.ids[picked])
    held_lda = None
    if held.size and config.preprocess == "lda":
        held_lda = dict(
            preprocess_data=(x[held], y[held]),
            preprocess_rows=Rows(namespace, ids[held], labels=True),
        )
    fitted = fit_dkvb(
        config.dkvb_config(x.shape[1], num_classes),
        x[rows],
        y[rows],
        key=jax.random.key(config.seed) if key is None else key,
        key_data=source[picked],
        key_rows=source_rows,
        key_config=config.key_config(),
        value_config=config.value_config(),
        stats_config=config.stats_config(),
        preprocess=config.preprocess,
        eval_data=eval_data,
        checkpoint_dir=checkpoint_dir,
        encoder=encoder,
        run_info=run_info,
        progress=progress,
        dataset=dataset,
        ids=ids[rows],
        **(held_lda or {}),
    )
    return Fit(fitted, rows, held)
