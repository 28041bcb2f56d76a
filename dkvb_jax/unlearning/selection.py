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


def mask_top_n(counts: jax.Array, n: int | jax.Array, *, loop_free: bool = False) -> jax.Array:
    """UvA selection: the `n` most-retrieved keys of each codebook.

    Keys never retrieved (count 0) are never selected: masking them would remove nothing the
    forget data used, only capacity other data might need.

    Args:
      counts: `[..., codebooks, keys]` usage counts of the forget data.
      n: keys per codebook (static int or traced scalar).
      loop_free: select through `lax.top_k` instead of bisection (the same keys; slower for
        large `n`), for counting FLOPs: XLA counts a loop body once.

    Returns:
      bool `[..., codebooks, keys]`.
    """
    counts = jnp.asarray(counts)
    if isinstance(n, int) and not isinstance(n, bool):
        k = max(0, min(n, counts.shape[-1]))
        if k == 0:
            return jnp.zeros(counts.shape, bool)
        return _top_n_positive(counts, k, loop_free) & (counts > 0)
    return (key_ranks(counts) < n) & (counts > 0)


# Tie-breaking scans blocks of this many keys: a cumsum over a whole 4096-key row costs as much as
# the rest of the selection on XLA:CPU; block sums, then one block's cumsum, cost a pass each.
_TIE_BLOCK = 64


@functools.partial(jax.jit, static_argnums=(1, 2))  # compiled once per shape, also when eager
def _top_n_positive(counts: jax.Array, n: int, loop_free: bool = False) -> jax.Array:
    """The `n` largest entries of each row (ties to the lower index), where it matters.

    Exact wherever the entry is positive, which is all `mask_top_n` keeps: entries <= 0 are
    clipped to 0 first. Integer counts: the `n`-th largest value `v` of each row by bisection
    over `[0, sum / n]` (a nonnegative row cannot hold `n` entries above its sum / n), each step
    one compare-and-count pass, about 5 steps for the paper's N = 256 of 5,000 retrievals; then
    every entry above `v` and the first tied ones. XLA:CPU's top-k sorts integers in full and
    takes 10 ms for the top 256 of the paper's 256 x 4096 histogram even through float32.
    Floats, uint32 and 64-bit counts use `lax.top_k`.
    """
    dtype = counts.dtype
    bisect = jnp.issubdtype(dtype, jnp.integer) and dtype.itemsize <= 4 and dtype != jnp.uint32
    if loop_free or not bisect:  # floats, and the rare uint32 / 64-bit counts
        idx = jax.lax.top_k(counts, n)[1]
        return jnp.put_along_axis(jnp.zeros(counts.shape, bool), idx, True, axis=-1, inplace=False)
    # Unsigned, so `hi` can sit one above int32's largest value (2**31) without overflowing.
    pos = jnp.maximum(counts, 0).astype(jnp.uint32)
    # Summed in float32 so no row overflows; the 0.1% margin covers its rounding error, so `hi`
    # stays above the n-th largest value (the invariant below).
    total = jnp.sum(pos, axis=-1, dtype=jnp.float32)
    hi = jnp.minimum(total / n * 1.001 + 1.0, 2.0**31).astype(jnp.uint32)
    lo = jnp.zeros_like(hi)

    # Invariant: at least n entries >= lo, fewer than n entries >= hi; lo is v once hi = lo + 1.
    def step(bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(pos >= mid[..., None], axis=-1) >= n
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    v, _ = jax.lax.while_loop(lambda b: jnp.any(b[1] - b[0] > 1), step, (lo, hi))
    above = pos > v[..., None]
    tied = pos == v[..., None]
    last = _index_of_nth_true(tied, n - jnp.sum(above, axis=-1))
    return above | (tied & (jnp.arange(counts.shape[-1]) <= last[..., None]))


def _index_of_nth_true(flags: jax.Array, nth: jax.Array) -> jax.Array:
    """Index of the `nth` (1-based, at most the row's count) True entry of each row of `flags`."""
    k, b = flags.shape[-1], _TIE_BLOCK
    nb = -(-k // b)
    padded = jnp.pad(flags, [(0, 0)] * (flags.ndim - 1) + [(0, nb * b - k)])
    blocks = padded.reshape(*flags.shape[:-1], nb, b).astype(jnp.int32)
    per_block = jnp.sum(blocks, axis=-1)
    through = jnp.cumsum(per_block, axis=-1)
    blk = jnp.sum(through < nth[..., None], axis=-1)  # the block holding the nth True
    before = jnp.take_along_axis(through - per_block, blk[..., None], axis=-1)[..., 0]
    inside = jnp.take_along_axis(blocks, blk[..., None, None], axis=-2)[..., 0, :]
    offset = jnp.sum(jnp.cumsum(inside, axis=-1) < (nth - before)[..., None], axis=-1)
    return blk * b + offset


def mask_top_n_per_class(
    usage: jax.Array, forget: jax.Array, n: int | jax.Array, *, loop_free: bool = False
) -> jax.Array:
    """Union over the forget classes of each class's own top-`n` keys.

    Taking each class's top `n` (rather than the top `n` of the summed counts) gives every
    forgotten class the same budget, so forgetting classes together equals forgetting them one
    after the other.

    Args:
      usage: per-class histogram `[classes, codebooks, keys]`.
      forget: bool `[classes]`, True for the classes to forget.
      n: keys per codebook and class.
      loop_free: as in :func:`mask_top_n`.

    Returns:
      bool `[codebooks, keys]`.
    """
    per_class = mask_top_n(usage, n, loop_free=loop_free) & forget[:, None, None]
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
