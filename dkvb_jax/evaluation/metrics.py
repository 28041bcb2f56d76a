"""Accuracy on the unlearning splits, changes against the original model, per-class accuracy.

All passes are jitted and batched with ``lax.map`` over fixed-size padded batches, so any model
(a linear head or a DKVB with large codebooks) is evaluated with bounded memory in one program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dkvb_jax import _batching
from dkvb_jax.evaluation.cost import compile_with_flops
from dkvb_jax.evaluation.splits import ApplyFn, UnlearningData, validate_split

__all__ = [
    "accuracy",
    "compiled_accuracy",
    "deltas",
    "evaluate_unlearning",
    "per_class_accuracy",
    "per_example_loss",
]

SPLITS = ("retain_train", "forget_train", "retain_test", "forget_test")


def _logits(
    apply_fn: ApplyFn, variables: Mapping[str, Any], x: jax.Array, batch_size: int
) -> jax.Array:
    return _batching.batched_apply(lambda b: apply_fn(variables, b), x, batch_size)


def _correct(apply_fn, variables, x, y, batch_size):
    return jnp.argmax(_logits(apply_fn, variables, x, batch_size), axis=-1) == y


def accuracy(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    x: jax.Array,
    y: jax.Array,
    *,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy in [0, 1] of ``apply_fn`` on ``x`` [n, dim], ``y`` [n]."""
    validate_split(x, y, "accuracy input")
    correct = jax.jit(_correct, static_argnums=(0, 4))(
        apply_fn, variables, jnp.asarray(x), jnp.asarray(y), batch_size
    )
    return float(jnp.mean(correct))


def compiled_accuracy(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    splits: Mapping[str, tuple[jax.Array, jax.Array]],
    *,
    batch_size: int = 1024,
) -> tuple[Callable[[Mapping[str, Any]], dict[str, jax.Array]], float]:
    """Ahead-of-time compiled accuracy on several fixed splits at once, reusable across epochs.

    Args:
      splits: ``{name: (x [n, dim], y [n])}``.

    Returns:
      ``(fn, flops)``: ``fn(variables) -> {name: scalar accuracy}`` (arrays, no host sync) and
      the XLA FLOPs of one call (used to account monitoring cost). One program covers every
      split, so monitoring costs one compilation.
    """
    for name, (x, y) in splits.items():
        validate_split(x, y, f"accuracy split {name!r}")
    arrays = {name: (jnp.asarray(x), jnp.asarray(y)) for name, (x, y) in splits.items()}

    # The splits are arguments, not closed-over constants, so large arrays are not baked into
    # the program.
    def accs(v, arrays):
        return {
            name: jnp.mean(_correct(apply_fn, v, x, y, batch_size))
            for name, (x, y) in arrays.items()
        }

    compiled, _ = compile_with_flops(accs, variables, arrays)
    # Counted with one batch spanning each split: XLA counts a loop body once (see cost.py).
    whole = max(x.shape[0] for x, _ in arrays.values())
    _, flops = compile_with_flops(
        lambda v, a: {n: jnp.mean(_correct(apply_fn, v, x, y, whole)) for n, (x, y) in a.items()},
        variables,
        arrays,
    )
    return (lambda v: compiled(v, arrays)), flops


def per_example_loss(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    x: jax.Array,
    y: jax.Array,
    *,
    batch_size: int = 1024,
) -> np.ndarray:
    """Cross-entropy of each example, [n] float32 (the membership-inference feature)."""
    validate_split(x, y, "per_example_loss input")
    return np.asarray(_losses(apply_fn, variables, jnp.asarray(x), jnp.asarray(y), batch_size))


# Module level, so that a second call with the same shapes reuses the compiled program (a
# function defined inside per_example_loss was a new one to jit, and compiled, on every call).
@functools.partial(jax.jit, static_argnums=(0, 4))
def _losses(apply_fn, variables, x, y, batch_size):
    return optax.softmax_cross_entropy_with_integer_labels(
        _logits(apply_fn, variables, x, batch_size), y
    )


def per_class_accuracy(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    x: jax.Array,
    y: jax.Array,
    *,
    batch_size: int = 1024,
) -> dict[int, float]:
    """Accuracy of each class that occurs in ``y``: ``{class_id: accuracy}`` (absent classes omitted)."""
    validate_split(x, y, "per_class_accuracy input")
    correct = np.asarray(
        jax.jit(_correct, static_argnums=(0, 4))(
            apply_fn, variables, jnp.asarray(x), jnp.asarray(y), batch_size
        )
    )
    y = np.asarray(y)
    return {int(c): float(correct[y == c].mean()) for c in np.unique(y)}


def evaluate_unlearning(
    apply_fn: ApplyFn, variables: Mapping[str, Any], data: UnlearningData, *, batch_size: int = 1024
) -> dict[str, float]:
    """Accuracy on ``retain_train``, ``forget_train``, ``retain_test`` and ``forget_test``.

    The ``val_*`` fields of ``data`` serve as the test splits; splits that are None are left out.
    """
    pairs = {
        "retain_train": (data.retain_x, data.retain_y),
        "forget_train": (data.forget_x, data.forget_y),
        "retain_test": (data.val_retain_x, data.val_retain_y),
        "forget_test": (data.val_forget_x, data.val_forget_y),
    }
    return {
        name: accuracy(apply_fn, variables, x, y, batch_size=batch_size)
        for name, (x, y) in pairs.items()
        if x is not None and y is not None
    }


def deltas(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` for every key both share (e.g. accuracy change vs the original model)."""
    return {k: float(after[k]) - float(before[k]) for k in after if k in before}
