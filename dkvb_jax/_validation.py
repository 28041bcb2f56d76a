"""Input checks shared by the library's entry points.

Shape and dtype checks are static and run under `jit` too. Value checks (finiteness, label
range) need concrete arrays, so they run only when the input is not a tracer: callers that
`jit` their own code validate their data once, outside.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dkvb_jax.errors import InputError, InputTypeError


def is_concrete(x: Any) -> bool:
    """True when `x` holds values this process can read.

    False for tracers inside `jit`/`vmap`/`grad`, and for a multi-host array whose rows live
    partly on other processes.
    """
    if isinstance(x, jax.core.Tracer):
        return False
    return not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def check_embeddings(
    x: Any, embed_dim: int, *, name: str = "embeddings", allow_tokens: bool = True
):
    """Checks `x` is a float array `[batch, embed_dim]` (or `[batch, tokens, embed_dim]`).

    Raises:
      TypeError: `x` is not a floating-point array.
      ValueError: wrong rank, wrong last dimension, empty batch, or NaN/inf values.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise InputTypeError(f"{name} must be an array, got {type(x).__name__}.")
    ranks = (2, 3) if allow_tokens else (2,)
    if x.ndim not in ranks:
        expected = (
            "[batch, embed_dim] or [batch, tokens, embed_dim]"
            if allow_tokens
            else "[batch, embed_dim]"
        )
        raise InputError(f"{name} must have shape {expected}, got shape {tuple(x.shape)}.")
    if x.shape[-1] != embed_dim:
        raise InputError(
            f"{name} have dimension {x.shape[-1]} but the model was configured with "
            f"embed_dim={embed_dim} (shape {tuple(x.shape)}). Use embeddings from the encoder the "
            "model was built for, or set DKVBConfig.embed_dim to match."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputTypeError(
            f"{name} must be floating point, got dtype {x.dtype}. Cast with x.astype(jnp.float32)."
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (batch size 0): nothing to look up.")
    if is_concrete(x) and not bool(np.isfinite(np.asarray(x)).all()):
        bad = int((~np.isfinite(np.asarray(x))).any(axis=tuple(range(1, x.ndim))).sum())
        raise InputError(
            f"{name} contain NaN or inf in {bad} of {x.shape[0]} rows; check the encoder output "
            "or the preprocessing."
        )


def check_labels(y: Any, num_classes: int, *, n: int | None = None, name: str = "labels"):
    """Checks `y` is an integer vector `[n]` with values in `[0, num_classes)`."""
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise InputTypeError(f"{name} must be an array, got {type(y).__name__}.")
    if y.ndim != 1:
        raise InputError(f"{name} must have shape [batch], got {tuple(y.shape)}.")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise InputTypeError(f"{name} must be integer class ids, got dtype {y.dtype}.")
    if n is not None and y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} entries but there are {n} embeddings.")
    if y.shape[0] == 0:
        raise InputError(f"{name} is empty: nothing to train or count on.")
    if is_concrete(y):
        y_np = np.asarray(y)
        lo, hi = int(y_np.min()), int(y_np.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(
                f"{name} must lie in [0, {num_classes}) for a model with num_classes="
                f"{num_classes}, got values in [{lo}, {hi}]."
            )


def check_positive_int(value: Any, name: str):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")


def check_codes(indices: Any, valid: Any, num_keys: int, *, name: str = "codes") -> None:
    """Checks codes `(indices, valid)` `[n, codebooks, top_k]` refer to real keys.

    `indices` must be integer and `valid` bool; every index marked valid must lie in
    `[0, num_keys)`. The index of an invalid entry is ignored (:func:`compute_codes` writes -1
    there). Without this, an index past the end is dropped from every count and a negative one
    wraps to a key counted from the end. The value check runs on concrete arrays only.

    Raises:
      InputTypeError: `indices` not integer or `valid` not bool.
      InputError: shapes differ, or a valid index is negative or `>= num_keys`.
    """
    for arr, what in ((indices, "indices"), (valid, "valid")):
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise InputTypeError(
                f"{name} must be a pair of arrays (indices, valid) from compute_codes; its "
                f"{what} is a {type(arr).__name__}."
            )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise InputTypeError(
            f"{name}: indices must be integer key ids, got dtype {indices.dtype}."
        )
    if valid.dtype != jnp.bool_:
        raise InputTypeError(
            f"{name}: valid must be a bool array (True where the index is a retrieved key), got "
            f"dtype {valid.dtype}."
        )
    if tuple(valid.shape) != tuple(indices.shape):
        raise InputError(
            f"{name}: indices and valid must have the same shape, got {tuple(indices.shape)} and "
            f"{tuple(valid.shape)}."
        )
    if not (is_concrete(indices) and is_concrete(valid)):
        return
    idx, ok = np.asarray(indices), np.asarray(valid)
    used = idx[ok]
    if used.size and (used.min() < 0 or used.max() >= num_keys):
        lo, hi = int(used.min()), int(used.max())
        why = (
            "negative indices are marked valid (-1 marks an invalid entry: set valid=False there)"
            if lo < 0
            else f"indices reach {hi}, past the last key"
        )
        raise InputError(
            f"{name}: every valid index must be a key id in [0, num_keys={num_keys}), got valid "
            f"indices in [{lo}, {hi}]: {why}. Use the codes compute_codes returns for this model."
        )


@functools.lru_cache(maxsize=64)
def variable_specs(config: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{"collection/name": (shape, dtype)}` of the variables `DKVB(config).init` creates.

    Traced with `jax.eval_shape`: nothing is initialised or allocated.
    """
    from dkvb_jax.model import DKVB  # the model imports this module

    x = jax.ShapeDtypeStruct((1, config.embed_dim), jnp.float32)
    shapes = jax.eval_shape(DKVB(config).init, jax.random.key(0), x)
    flat = traverse_util.flatten_dict(dict(shapes), sep="/")
    return {path: (tuple(leaf.shape), np.dtype(leaf.dtype)) for path, leaf in flat.items()}


def check_variables_match(config: Any, variables: Any, *, name: str = "variables") -> None:
    """Checks `variables` are exactly what a model with `config` holds, and finite.

    Every collection and leaf of `DKVB(config).init` must be present with its shape and dtype,
    nothing else may be, and floating leaves must hold no NaN or inf (checked where the values
    are readable, see :func:`is_concrete`).

    Raises:
      TypeError: `variables` is not a mapping of collections, or a leaf is not an array.
      ValueError: a collection or leaf is missing or unexpected, a shape or dtype differs, or
        a leaf holds non-finite values; the message names the leaf.
    """
    expected = variable_specs(config)
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"{name} must be a DKVB variables dict (from model.init), got "
            f"{type(variables).__name__}."
        )
    collections = {p.split("/")[0] for p in expected}
    for collection in sorted(collections):
        if not isinstance(variables.get(collection), Mapping):
            raise ValueError(
                f"{name} must be a DKVB variables dict with a '{collection}' collection (from "
                f"model.init), got collections {sorted(map(str, variables))}."
            )
    flat = traverse_util.flatten_dict(dict(variables), sep="/")
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected)) + sorted(set(map(str, variables)) - collections)
    if missing or extra:
        raise ValueError(
            f"{name} do not match the model configuration: missing {missing}, unexpected "
            f"{extra}; a model with this config holds exactly {sorted(expected)}. Pass the "
            "config the variables were built with."
        )
    for path, (shape, dtype) in expected.items():
        leaf = flat[path]
        where = f"{name}[{']['.join(repr(p) for p in path.split('/'))}]"
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(f"{where} must be an array, got {type(leaf).__name__}.")
        if tuple(leaf.shape) != shape:
            raise ValueError(
                f"{where} has shape {tuple(leaf.shape)}, but the model configuration gives "
                f"{shape} (num_codebooks={config.num_codebooks}, num_keys={config.num_keys}, "
                f"key_dim={config.key_dim}). Pass the config the variables were built with."
            )
        if np.dtype(leaf.dtype) != dtype:
            raise ValueError(
                f"{where} has dtype {np.dtype(leaf.dtype)}, but a model with this config holds "
                f"{dtype}; cast it back (e.g. a mask must stay boolean)."
            )
        if jnp.issubdtype(dtype, jnp.inexact) and is_concrete(leaf):
            bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
            if bad:
                raise ValueError(
                    f"{where} holds {bad} non-finite value(s) (NaN or inf); a model with them "
                    "predicts garbage. Find where they came from (a diverged training step, a "
                    "division by zero) rather than saving them."
                )
