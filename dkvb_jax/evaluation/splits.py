"""The data of one unlearning run (retain / forget / held-out splits) and the checks on it.

Shared by the baselines and the evaluation; lives here, below both, so neither imports the other's
package initialiser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ApplyFn",
    "UnlearningData",
    "check_label_space",
    "class_unlearning_data",
    "validate_split",
    "validate_unlearning_data",
]

ApplyFn = Callable[[Mapping[str, Any], jax.Array], jax.Array]
"""``apply_fn(variables, x [batch, dim]) -> logits [batch, num_classes]`` (e.g. ``module.apply``)."""


class UnlearningData(NamedTuple):
    """Arrays one unlearning run works on (a pytree, so it can be passed through jax).

    Attributes:
      retain_x: [n_retain, dim] float32 embeddings to keep.
      retain_y: [n_retain] int32 labels.
      forget_x: [n_forget, dim] float32 embeddings to forget.
      forget_y: [n_forget] int32 labels.
      val_retain_x, val_retain_y, val_forget_x, val_forget_y: optional held-out arrays
        (e.g. test splits) recorded in the trajectory; ``val_forget`` is also the reference
        for SCRUB+R rewinding.
    """

    retain_x: jax.Array
    retain_y: jax.Array
    forget_x: jax.Array
    forget_y: jax.Array
    val_retain_x: jax.Array | None = None
    val_retain_y: jax.Array | None = None
    val_forget_x: jax.Array | None = None
    val_forget_y: jax.Array | None = None


def class_unlearning_data(
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    forget_classes: Sequence[int] | int,
    *,
    val_x: jax.Array | np.ndarray | None = None,
    val_y: jax.Array | np.ndarray | None = None,
) -> UnlearningData:
    """Splits a labelled set into retain (other classes) and forget (``forget_classes``) parts.

    Args:
      x: [n, dim] embeddings; y: [n] integer labels.
      forget_classes: class id(s) to forget.
      val_x, val_y: optional held-out set split the same way into the ``val_*`` fields.

    Raises:
      ValueError: if a forget class has no example in ``y`` (or in ``val_y``), or if either side
        of the split is empty.
    """
    classes = np.atleast_1d(np.asarray(forget_classes, dtype=np.int64))
    if classes.size == 0:
        raise ValueError("forget_classes is empty: name at least one class to forget.")

    def split(xs, ys, what):
        xs, ys = np.asarray(xs, np.float32), np.asarray(ys)
        validate_split(xs, ys, what)
        present = np.unique(ys)
        absent = [int(c) for c in classes if c not in present]
        if absent:
            raise ValueError(
                f"forget class(es) {absent} have no example in {what} (classes present: "
                f"{present.tolist()}); pick classes that occur in the data."
            )
        is_forget = np.isin(ys, classes)
        if is_forget.all():
            raise ValueError(
                f"every example of {what} is in forget_classes {classes.tolist()}: the retain set would be empty."
            )
        ys = ys.astype(np.int32)
        return (
            jnp.asarray(xs[~is_forget]),
            jnp.asarray(ys[~is_forget]),
            jnp.asarray(xs[is_forget]),
            jnp.asarray(ys[is_forget]),
        )

    retain_x, retain_y, forget_x, forget_y = split(x, y, "y")
    val = (None,) * 4
    if (val_x is None) != (val_y is None):
        raise ValueError("pass both val_x and val_y, or neither.")
    if val_x is not None:
        val = split(val_x, val_y, "val_y")
    return UnlearningData(retain_x, retain_y, forget_x, forget_y, val[0], val[1], val[2], val[3])


def validate_split(x: Any, y: Any, name: str) -> None:
    """Checks one (x, y) pair: non-empty, x [n, dim] floating, y [n] integer.

    Raises:
      ValueError / TypeError naming ``name`` and what was expected.
    """
    if x is None or y is None:
        raise ValueError(f"{name}: x and y are required, got None.")
    x_shape, y_shape = np.shape(x), np.shape(y)
    if len(x_shape) != 2:
        raise ValueError(f"{name}: x must be [n, dim] embeddings, got shape {x_shape}.")
    if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise ValueError(
            f"{name}: y must be [n] labels with n = {x_shape[0]} (x rows), got shape {y_shape}."
        )
    if x_shape[0] == 0:
        raise ValueError(
            f"{name} is empty (0 examples); an unlearning run needs at least one example there."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"{name}: x must be floating point embeddings, got dtype {jnp.result_type(x)}."
        )
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"{name}: y must be integer class labels, got dtype {jnp.result_type(y)}.")


def check_label_space(
    apply_fn: ApplyFn, variables: Mapping[str, Any], x: jax.Array, *ys: jax.Array
) -> int:
    """Checks that the model's output dimension covers every label; returns num_classes.

    Uses ``jax.eval_shape`` so no FLOPs are spent.

    Raises:
      ValueError: if the model does not return [batch, num_classes] logits or a label is out of
        ``[0, num_classes)``.
    """
    out = jax.eval_shape(apply_fn, variables, jax.ShapeDtypeStruct((1, x.shape[1]), x.dtype))
    if len(out.shape) != 2:
        raise ValueError(
            f"apply_fn must return [batch, num_classes] logits, got shape {out.shape}."
        )
    num_classes = int(out.shape[1])
    for y in ys:
        if y is None or y.shape[0] == 0:
            continue
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"label space mismatch: labels span [{lo}, {hi}] but the model outputs {num_classes} "
                f"logits; use a model with num_classes > {hi} or relabel the data."
            )
    return num_classes


def validate_unlearning_data(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    data: UnlearningData,
    *,
    use_forget: bool = True,
) -> UnlearningData:
    """Checks ``data`` for a baseline and returns it with jnp arrays.

    Args:
      use_forget: False for methods that must never read the forget split (the retrain oracle):
        its arrays are then neither checked nor converted.

    Raises:
      TypeError: if ``data`` is not an ``UnlearningData``.
      ValueError: on an empty split, bad shapes, or labels outside the model's output space.
    """
    if not isinstance(data, UnlearningData):
        raise TypeError(
            f"data must be an UnlearningData, got {type(data).__name__}; build one with class_unlearning_data(...)."
        )
    if "params" not in variables:
        raise ValueError(
            f"variables must contain a 'params' collection, got collections {sorted(variables)}."
        )
    validate_split(data.retain_x, data.retain_y, "retain set (data.retain_x/retain_y)")
    fields = {"retain_x": jnp.asarray(data.retain_x), "retain_y": jnp.asarray(data.retain_y)}
    if use_forget:
        validate_split(data.forget_x, data.forget_y, "forget set (data.forget_x/forget_y)")
        fields.update(forget_x=jnp.asarray(data.forget_x), forget_y=jnp.asarray(data.forget_y))
    for prefix in ("val_retain", "val_forget"):
        x, y = getattr(data, f"{prefix}_x"), getattr(data, f"{prefix}_y")
        if (x is None) != (y is None):
            raise ValueError(
                f"data.{prefix}_x and data.{prefix}_y must both be given or both be None."
            )
        if x is not None:
            validate_split(x, y, f"validation set (data.{prefix}_x/{prefix}_y)")
            fields.update({f"{prefix}_x": jnp.asarray(x), f"{prefix}_y": jnp.asarray(y)})
    data = data._replace(**fields)
    ys = [data.retain_y, data.val_retain_y, data.val_forget_y] + (
        [data.forget_y] if use_forget else []
    )
    check_label_space(apply_fn, variables, data.retain_x, *ys)
    return data
