"""Input checks of the unlearning entry points (concrete values only: they run outside `jit`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dkvb_jax.config import DKVBConfig


def check_variables(config: DKVBConfig, variables: Any) -> None:
    """Checks `variables` has the collections and shapes a model with `config` creates.

    Raises:
      TypeError: `variables` is not a mapping with ``params``, ``frozen`` and ``mask``.
      ValueError: a leaf's shape differs from the configuration (variables of another model).
    """
    if not hasattr(variables, "keys") or not {"params", "frozen", "mask"} <= set(variables):
        got = sorted(variables) if hasattr(variables, "keys") else type(variables).__name__
        raise TypeError(
            "variables must be a DKVB variables dict with collections 'params', 'frozen' and "
            f"'mask' (from model.init), got {got}."
        )
    c, k = config.num_codebooks, config.num_keys
    expected = {
        ("frozen", "keys"): (c, k, config.key_dim),
        ("params", "values"): (c, k, config.resolved_value_dim),
        ("mask", "search"): (c, k),
        ("mask", "readout"): (c, k),
    }
    if config.splitter == "random_projection":
        expected[("frozen", "projection")] = (config.embed_dim, c, config.key_dim)
    for (col, name), shape in expected.items():
        leaf = variables[col].get(name) if hasattr(variables[col], "get") else None
        if leaf is None:
            raise ValueError(f"variables['{col}']['{name}'] is missing; expected shape {shape}.")
        if tuple(leaf.shape) != shape:
            raise ValueError(
                f"variables['{col}']['{name}'] has shape {tuple(leaf.shape)} but the model "
                f"configuration expects {shape} (num_codebooks={c}, num_keys={k}). These "
                "variables come from a model with another configuration; pass the matching model."
            )


def check_n(n: Any, num_keys: int, name: str) -> int:
    """Checks a number of pairs/examples `n` is an int in `[1, num_keys]`."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(n).__name__} {n!r}.")
    if not 1 <= n <= num_keys:
        raise ValueError(
            f"{name}={n} is out of range: it must lie in [1, num_keys={num_keys}] (a codebook "
            "cannot lose more keys than it holds)."
        )
    return int(n)


def check_classes(classes: Any, num_classes: int, name: str = "classes") -> tuple[int, ...]:
    """Normalises an int or a sequence of ints to a sorted tuple of distinct valid class ids.

    Raises:
      ValueError: empty, out of range, or every class of the model (nothing would remain).
    """
    if isinstance(classes, int | np.integer) and not isinstance(classes, bool):
        classes = (classes,)
    if not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(
            f"{name} must be an int or a sequence of ints, got {type(classes).__name__}."
        )
    arr = np.asarray(classes)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: name at least one class to forget.")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integer class ids, got {arr!r}.")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} contains {bad.tolist()}, outside the model's classes [0, {num_classes})."
        )
    out = tuple(sorted({int(c) for c in arr}))
    if len(out) == num_classes:
        raise ValueError(
            f"{name} names every one of the {num_classes} classes: forgetting all of them leaves "
            "no model to keep. Retrain from scratch instead, or forget fewer classes."
        )
    return out


def check_histogram(usage: Any, config: DKVBConfig, name: str = "usage") -> None:
    """Checks a per-class usage histogram `[classes, codebooks, keys]`."""
    shape = (config.num_classes, config.num_codebooks, config.num_keys)
    if not hasattr(usage, "shape"):
        raise TypeError(f"{name} must be an array of shape {shape}, got {type(usage).__name__}.")
    if tuple(usage.shape) != shape:
        raise ValueError(
            f"{name} must be a per-class usage histogram of shape [classes, codebooks, keys] = "
            f"{shape} (from key_usage(model, variables, x, labels)), got {tuple(usage.shape)}."
        )


def check_example_ids(ids: Any, n: int, name: str = "example_ids") -> np.ndarray:
    """Checks distinct example ids `[m]` in `[0, n)`; returns them sorted as int64."""
    arr = np.asarray(ids)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: name at least one example to forget.")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be a 1-D array of integer example ids, got {arr!r}.")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(
            f"{name} must lie in [0, {n}) (rows of the codes given), got values in "
            f"[{int(arr.min())}, {int(arr.max())}]."
        )
    return np.unique(arr).astype(np.int64)
