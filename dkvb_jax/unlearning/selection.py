"""Which pairs to mask: array-level, pure and jittable selections over usage counts.

Every function here maps arrays to a bool selection `[codebooks, keys]` (True = mask this pair)
and composes with `jit`, `vmap` and sharded code. ``n`` may be a Python int or a traced scalar,
so a sweep can `vmap` over it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dkvb_jax.training.usage import usage_from_codes


def key_ranks(counts: jax.Array) -> jax.Array:
    """Rank of every key within its codebook by decreasing count (0 = most retrieved).

    Args:
      counts: `[..., codebooks, keys]` usage counts.

    Returns:
      int32 ranks of the same shape; ties go to the lower key index first (like `lax.top_k`).
    """
    order = jnp.argsort(-counts, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def mask_top_n(counts: jax.Array, n: int | jax.Array) -> jax.Array:
    """UvA selection: the `n` most-retrieved keys of each codebook.

    Keys never retrieved (count 0) are never selected: masking them would remove nothing the
    forget data used, only capacity other data might need.

    Args:
      counts: `[..., codebooks, keys]` usage counts of the forget data.
      n: keys per codebook (static int or traced scalar).

    Returns:
      bool `[..., codebooks, keys]`.
    """
    counts = jnp.asarray(counts)
    if isinstance(n, int) and not isinstance(n, bool):
        # A static n needs only the top n of each codebook: a partial selection instead of two
        # full sorts (ties go to the lower index in both).
        k = max(0, min(n, counts.shape[-1]))
        if k == 0:
            return jnp.zeros(counts.shape, bool)
        chosen = jnp.zeros(counts.shape, bool)
        chosen = jnp.put_along_axis(chosen, _top_k_indices(counts, k), True, axis=-1, inplace=False)
        return chosen & (counts > 0)
    return (key_ranks(counts) < n) & (counts > 0)


@functools.partial(jax.jit, static_argnums=1)  # compiled once per shape, also when called eagerly
def _top_k_indices(counts: jax.Array, k: int) -> jax.Array:
    """`lax.top_k` indices; integer counts go through float32 whenever that is exact.

    XLA:CPU has a fast top-k only for float32 (integers fall back to a full sort, ~7x slower
    on the paper's 256 x 4096 histogram). Integers below 2^24 convert to float32 exactly, so
    the order and the lower-index tie-breaking are unchanged; larger counts keep the integers.
    """
    if not jnp.issubdtype(counts.dtype, jnp.integer):
        return jax.lax.top_k(counts, k)[1]
    exact = jnp.max(jnp.abs(counts)) < 2**24
    return jax.lax.cond(
        exact,
        lambda c: jax.lax.top_k(c.astype(jnp.float32), k)[1],
        lambda c: jax.lax.top_k(c, k)[1],
        counts,
    )


def mask_top_n_per_class(usage: jax.Array, forget: jax.Array, n: int | jax.Array) -> jax.Array:
    """Union over the forget classes of each class's own top-`n` keys.

    Taking each class's top `n` (rather than the top `n` of the summed counts) gives every
    forgotten class the same budget, so forgetting classes together equals forgetting them one
    after the other.

    Args:
      usage: per-class histogram `[classes, codebooks, keys]`.
      forget: bool `[classes]`, True for the classes to forget.
      n: keys per codebook and class.

    Returns:
      bool `[codebooks, keys]`.
    """
    per_class = mask_top_n(usage, n) & forget[:, None, None]
    return per_class.any(axis=0)


def codes_selection(
    indices: jax.Array, valid: jax.Array, num_keys: int, weights: jax.Array | None = None
) -> jax.Array:
    """UvE selection: every key retrieved by the given codes.

    Args:
      indices: int `[n, codebooks, top_k]` codes of the forget examples.
      valid: bool `[n, codebooks, top_k]`.
      num_keys: keys per codebook.
      weights: optional `[n]`; rows with weight 0 are ignored (e.g. the first `n_e` only).

    Returns:
      bool `[codebooks, keys]`.
    """
    return usage_from_codes(indices, valid, num_keys, weights=weights) > 0


def retain_aware(
    selection: jax.Array,
    forget_counts: jax.Array,
    retain_counts: jax.Array,
    *,
    ratio: float = 4.0,
    margin: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Spares selected keys that retain data uses far more than forget data.

    Counts are turned into per-codebook retrieval rates (count / total count of that codebook),
    so a large retain set does not outweigh a small forget set. A selected key is spared when
    ``retain_rate > ratio * forget_rate + margin``.

    Args:
      selection: bool `[codebooks, keys]` candidate pairs.
      forget_counts: `[codebooks, keys]` usage by the forget data.
      retain_counts: `[codebooks, keys]` usage by the retain data.
      ratio: how many times more often retain data must use a key to spare it.
      margin: additive slack on the rate, in [0, 1].

    Returns:
      The reduced selection, and the number of spared keys per codebook, int32 `[codebooks]`.
    """

    def rate(c):
        c = c.astype(jnp.float32)
        return c / jnp.maximum(c.sum(axis=-1, keepdims=True), 1.0)

    spare = selection & (rate(retain_counts) > ratio * rate(forget_counts) + margin)
    return selection & ~spare, spare.sum(axis=-1).astype(jnp.int32)


def psum_usage(
    indices: jax.Array,
    valid: jax.Array,
    num_keys: int,
    axis_name: str,
    labels: jax.Array | None = None,
    num_classes: int | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Usage histogram of a data shard, summed over the devices of `axis_name`.

    Call inside `shard_map` / `pmap` with each device's shard of codes; every device gets the
    global histogram, so the selection that follows is identical on all of them.
    """
    local = usage_from_codes(indices, valid, num_keys, labels, num_classes, weights)
    return jax.lax.psum(local, axis_name)
