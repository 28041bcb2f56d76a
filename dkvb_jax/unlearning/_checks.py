"""Input checks of the unlearning entry points (concrete values only: they run outside `jit`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _validation
from dkvb_jax.config import DKVBConfig
from dkvb_jax.errors import InputError, InputTypeError


def check_concrete(entry: str, **trees: Any) -> None:
    """Refuses traced inputs: the entry points validate values and hash them for the audit.

    Raises:
      InputError: a leaf of one of `trees` is a tracer (the call sits inside `jit`, `pmap`,
        `vmap` or `shard_map`); the message names the jittable functions to call there instead.
    """
    for name, tree in trees.items():
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
            raise InputError(
                f"{entry} got a traced {name}: it runs outside jit / pmap / vmap, since it checks "
                "concrete values and records them in its audit. Inside a jitted or pmapped "
                "function use the array-level core instead: a selection "
                "(unlearning.mask_top_n_per_class(usage, forget, n), mask_top_n(counts, n) or "
                "codes_selection(indices, valid, num_keys), with unlearning.psum_usage to sum a "
                "device's counts over the axis), then unlearning.apply_selection(variables, "
                "selection) or hard_delete; or call it before the pmap and pass its variables in."
            )


def check_variables(config: DKVBConfig, variables: Any) -> None:
    """Checks `variables` has the collections, shapes and dtypes a model with `config` creates.

    Raises:
      InputTypeError: `variables` is not a mapping with ``params``, ``frozen`` and ``mask``, a
        leaf is not an array, a mask is not bool, or keys / values / projection not floating.
      InputError: a leaf's shape differs from the configuration (variables of another model).
    """
    if not hasattr(variables, "keys") or not {"params", "frozen", "mask"} <= set(variables):
        got = sorted(variables) if hasattr(variables, "keys") else type(variables).__name__
        raise InputTypeError(
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
        where = f"variables['{col}']['{name}']"
        if leaf is None:
            raise InputError(f"{where} is missing; expected shape {shape}.")
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise InputTypeError(f"{where} must be an array, got {type(leaf).__name__}.")
        if tuple(leaf.shape) != shape:
            raise InputError(
                f"{where} has shape {tuple(leaf.shape)} but the model "
                f"configuration expects {shape} (num_codebooks={c}, num_keys={k}). These "
                "variables come from a model with another configuration; pass the matching model."
            )
        # A float mask would be OR-ed with a selection deep inside XLA; say what it must be here.
        if col == "mask" and leaf.dtype != np.bool_:
            raise InputTypeError(
                f"{where} has dtype {leaf.dtype}, but masks must be bool (True = pair switched "
                "off), as model.init and the unlearning functions make them. Pass the variables "
                "those return (or .astype(bool) a mask of 0/1 flags)."
            )
        if col != "mask" and not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise InputTypeError(
                f"{where} has dtype {leaf.dtype}, but keys, values and projection are floating "
                "point; pass the variables model.init and training return."
            )


def check_n(n: Any, upper: int, name: str, *, counts: str | None = None) -> int:
    """Checks a number of pairs/examples `n` is an int in `[1, upper]`.

    Args:
      n: the number to check.
      upper: its largest allowed value.
      name: the argument's name, for the message.
      counts: what `upper` counts when it is not the keys per codebook (e.g. "forget
        examples"); None for `num_keys`.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise InputTypeError(f"{name} must be an int, got {type(n).__name__} {n!r}.")
    if not 1 <= n <= upper:
        why = (
            f"[1, num_keys={upper}] (a codebook cannot lose more keys than it holds)"
            if counts is None
            else f"[1, {upper}]: there are {upper} {counts}"
        )
        raise InputError(f"{name}={n} is out of range: it must lie in {why}.")
    return int(n)


def check_classes(classes: Any, num_classes: int, name: str = "classes") -> tuple[int, ...]:
    """Normalises an int or a sequence of ints to a sorted tuple of distinct valid class ids.

    Raises:
      ValueError: empty, out of range, or every class of the model (nothing would remain).
    """
    if isinstance(classes, int | np.integer) and not isinstance(classes, bool):
        classes = (classes,)
    if not isinstance(classes, Sequence | np.ndarray):
        raise InputTypeError(
            f"{name} must be an int or a sequence of ints, got {type(classes).__name__}."
        )
    arr = np.asarray(classes)
    if arr.size == 0:
        raise InputError(f"{name} is empty: name at least one class to forget.")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputTypeError(f"{name} must be integer class ids, got {arr!r}.")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise InputError(
            f"{name} contains {bad.tolist()}, outside the model's classes [0, {num_classes})."
        )
    out = tuple(sorted({int(c) for c in arr}))
    if len(out) == num_classes:
        raise InputError(
            f"{name} names every one of the {num_classes} classes: forgetting all of them leaves "
            "no model to keep. Retrain from scratch instead, or forget fewer classes."
        )
    return out


def check_histogram(
    usage: Any, config: DKVBConfig, name: str = "usage", *, classes: Sequence[int] | None = None
) -> None:
    """Checks a per-class usage histogram `[classes, codebooks, keys]` holds counts.

    Counts are finite, non-negative whole numbers (any integer or floating dtype). With
    `classes`, each of them must have recorded usage: an all-zero row means the histogram never
    saw that class, and UvA would mask nothing while reporting success. That is an error, not a
    warning. Value checks run on concrete arrays only.

    Raises:
      InputTypeError: not an array, or not a real-valued numeric one.
      InputError: wrong shape, NaN/inf, negative or fractional counts, or a requested class with
        no recorded usage.
    """
    shape = (config.num_classes, config.num_codebooks, config.num_keys)
    if not hasattr(usage, "shape") or not hasattr(usage, "dtype"):
        raise InputTypeError(
            f"{name} must be an array of shape {shape}, got {type(usage).__name__}."
        )
    if tuple(usage.shape) != shape:
        raise InputError(
            f"{name} must be a per-class usage histogram of shape [classes, codebooks, keys] = "
            f"{shape} (from key_usage(model, variables, x, labels)), got {tuple(usage.shape)}."
        )
    floating = jnp.issubdtype(usage.dtype, jnp.floating)
    if usage.dtype == np.bool_ or not (floating or jnp.issubdtype(usage.dtype, jnp.integer)):
        raise InputTypeError(
            f"{name} must hold retrieval counts (integer or float dtype), got dtype {usage.dtype}."
        )
    if not _validation.is_concrete(usage):
        return
    u = np.asarray(usage).astype(np.float64 if floating else np.int64)
    hint = "Build it with key_usage(model, variables, x, labels) (or load the one saved at fit)."
    if floating:
        if not np.isfinite(u).all():
            raise InputError(
                f"{name} contains {int((~np.isfinite(u)).sum())} NaN or inf entries; a usage "
                f"histogram holds retrieval counts. {hint}"
            )
        if (u != np.round(u)).any():
            bad = u[u != np.round(u)]
            raise InputError(
                f"{name} contains {bad.size} non-integer entries (e.g. {float(bad[0])!r}); a usage "
                f"histogram holds whole retrieval counts. {hint}"
            )
    if (u < 0).any():
        raise InputError(
            f"{name} contains {int((u < 0).sum())} negative entries (down to {u.min().item()}); "
            f"retrieval counts cannot be negative. {hint}"
        )
    if classes is not None:
        empty = [int(c) for c in classes if not u[int(c)].any()]
        if empty:
            raise InputError(
                f"{name} records no retrievals for class(es) {empty}: the histogram was built on "
                "data without them (or other labels), so UvA would mask nothing. Rebuild it on "
                "data that includes these classes, or check the class ids."
            )


def check_example_ids(ids: Any, n: int, name: str = "example_ids") -> np.ndarray:
    """Checks distinct example ids `[m]` in `[0, n)`; returns them sorted as int64."""
    arr = np.asarray(ids)
    if arr.size == 0:
        raise InputError(f"{name} is empty: name at least one example to forget.")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputTypeError(f"{name} must be a 1-D array of integer example ids, got {arr!r}.")
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(
            f"{name} must lie in [0, {n}) (rows of the codes given), got values in "
            f"[{int(arr.min())}, {int(arr.max())}]."
        )
    return np.unique(arr).astype(np.int64)
