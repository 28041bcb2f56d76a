"""The ``rerank`` nearest-key search, made for the matmul units of GPUs and TPUs.

One bfloat16 matmul pass (a TPU MXU or GPU tensor-core pass, float32 accumulation) bounds every
squared distance from below; the few keys of smallest bound are re-ranked by float32 direct
differences; a worst-case bound on the bfloat16 error proves, per `(row, codebook)`, that no
key left out can be nearer, and the pairs it cannot prove are searched again over all their
keys. The result is therefore that of the exact float32 search on any data; only its speed
depends on how often the proof fails (``experiments/benchmarks/rerank_certified.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smallest(d, top_k):
    """int32 positions and values of the `top_k` smallest entries of the last axis of `d`."""
    if top_k == 1:
        # argmin is cheaper than a sort and, like top_k, breaks ties towards the lower index.
        idx = jnp.argmin(d, axis=-1)[..., None]
        dist = jnp.take_along_axis(d, idx, axis=-1)
    else:
        neg, idx = jax.lax.top_k(-d, top_k)
        dist = -neg
    return idx.astype(jnp.int32), dist


def direct_distances(q, k):
    """`sum((q - k)^2)` over the last axis, unrolled over the few key dims.

    An unrolled sum stays one loop fusion with the gather that produced `k`, so gathered keys are
    never written out, and direct differences have no cancellation (unlike the matmul form).
    """
    return sum(jnp.square(q[..., j] - k[..., j]) for j in range(k.shape[-1]))


# Unit roundoff of bfloat16 (8-bit significand) and of float32.
_BF16_U = 2.0**-8
_F32_U = 2.0**-24


def prepare(keys):
    """Per-call key statistics of the ``rerank`` search, computed once for all chunks.

    Returns:
      Per-codebook centres `[codebooks, key_dim]` (mean key; distances are translation
      invariant, and centring shrinks the `|q| |k|` that scales the bfloat16 error), centred
      keys `[codebooks, keys, key_dim]` and their norms `[codebooks, keys]`.
    """
    centre = jnp.mean(keys, axis=1)
    kc = keys - centre[:, None]
    return centre, kc, jnp.sqrt(jnp.sum(kc * kc, axis=-1))


def _lower_bounds(queries, centre, kc, kn, search_mask):
    """Stage 1 of ``rerank``: a lower bound on every squared distance, `[rows, codebooks, keys]`.

    The dot products run on bfloat16 inputs with float32 accumulation (one pass of a TPU MXU or
    a GPU tensor core, on every backend alike). Rounding both inputs to bfloat16 moves each
    product by at most `(2u + u^2) |q_i k_i|`, so the distance by at most
    `2 (2u + u^2 + 2 g) |q| |k|` (`u` the bfloat16 unit roundoff, `g` float32 accumulation over
    `key_dim` terms); the remaining float32 roundings (centring, norms, sums) stay below
    `(key_dim + 8) u32 (|q| + |k|)^2`. Twice that bound is subtracted, so the result never
    exceeds the true distance. Masked keys get +inf.
    """
    key_dim = kc.shape[-1]
    qc = queries - centre[None]
    qk = jnp.einsum(
        "bcd,ckd->bck",
        qc.astype(jnp.bfloat16),
        kc.astype(jnp.bfloat16),
        preferred_element_type=jnp.float32,
    )
    q2 = jnp.sum(qc * qc, axis=-1)
    qn = jnp.sqrt(q2)[..., None]
    approx = q2[..., None] - 2.0 * qk + jnp.square(kn)[None]
    g = key_dim * _F32_U / (1 - key_dim * _F32_U)
    rel = 4.0 * (2 * _BF16_U + _BF16_U**2 + 2 * g)
    absolute = 2.0 * (key_dim + 8) * _F32_U
    err = rel * qn * kn[None] + absolute * jnp.square(qn + kn[None])
    return jnp.where(search_mask[None], jnp.inf, approx - err)


def search_rows(queries, keys, search_mask, prepared, top_k, candidates):
    """Exact search: bfloat16 distances pick candidates, float32 re-ranks them, a check proves it.

    The `candidates` keys of smallest lower bound (stage 1) are re-ranked by their float32
    distances (direct differences, as the ``blocked`` search's second stage). The result is
    certified when the `top_k`-th re-ranked distance, inflated by its own float32 rounding, is
    below the smallest lower bound of the keys left out: then no key left out can be nearer.
    The few uncertified `(row, codebook)` pairs (near-ties that bfloat16 cannot separate) are
    searched over all their keys with direct differences; if there are too many for that, the
    whole chunk is. Direct differences keep their precision where the matmul form cancels
    (queries and keys far from the origin), so the result is that of the float32 distances
    `sum((q - k)^2)`, as the ``blocked`` search's.

    Returns:
      int32 indices, float32 distances `[rows, codebooks, top_k]` and bool `certified`
      `[rows, codebooks]` (True where stage 1 alone sufficed).
    """
    rows, num_codebooks, key_dim = queries.shape
    num_keys = keys.shape[1]
    lb = _lower_bounds(queries, *prepared, search_mask)
    m = min(candidates, num_keys)
    if m < num_keys:
        neg, cand = jax.lax.top_k(-lb, m + 1)
        threshold = -neg[..., m]  # the smallest lower bound among the keys left out
        cand = cand[..., :m]
    else:
        cand = jnp.broadcast_to(jnp.arange(num_keys), lb.shape)
        threshold = jnp.full(lb.shape[:-1], jnp.inf)
    # In index order, equal distances keep the lower key index, as in every other method.
    cand = jnp.sort(cand, axis=-1)
    cb = jnp.arange(num_codebooks)[None, :, None]
    d = direct_distances(queries[:, :, None], keys[cb, cand])
    d = jnp.where(search_mask[cb, cand], jnp.inf, d)
    pos, dist = smallest(d, top_k)
    idx = jnp.take_along_axis(cand, pos, axis=-1)
    # The float32 re-rank distance is within (key_dim + 3) u32 of the true one (relative).
    kth = dist[..., -1] * (1 + 2 * (key_dim + 4) * _F32_U)
    certified = jnp.isinf(threshold) | (kth < threshold)
    idx, dist = _fallback(queries, keys, search_mask, idx, dist, certified, top_k)
    return idx.astype(jnp.int32), dist, certified


def _fallback(queries, keys, search_mask, idx, dist, certified, top_k):
    """Exact search over all keys for the `(row, codebook)` pairs stage 1 did not certify.

    Up to a fixed number of pairs (1/32 of the chunk's, at least 8) are gathered and searched
    with direct differences; beyond that, all pairs of the chunk are (one elementwise pass over
    `[rows, codebooks, keys]`, without the matmul units but as exact).
    """
    rows, num_codebooks, key_dim = queries.shape
    pairs = rows * num_codebooks
    size = min(pairs, max(8, pairs // 32))
    bad = ~certified.reshape(pairs)
    # Padding entries point past the end; their scatter is dropped.
    sel = jnp.nonzero(bad, size=size, fill_value=pairs)[0]
    safe = jnp.minimum(sel, pairs - 1)
    q = queries.reshape(pairs, key_dim)[safe]  # [size, key_dim]
    c = safe % num_codebooks
    d = direct_distances(q[:, None], keys[c])  # [size, keys]
    few_idx, few_dist = smallest(jnp.where(search_mask[c], jnp.inf, d), top_k)
    idx = idx.reshape(pairs, top_k).at[sel].set(few_idx, mode="drop")
    dist = dist.reshape(pairs, top_k).at[sel].set(few_dist, mode="drop")
    idx, dist = idx.reshape(rows, num_codebooks, top_k), dist.reshape(rows, num_codebooks, top_k)

    def whole_chunk(args):
        idx, dist = args
        d = direct_distances(queries[:, :, None], keys[None])  # [rows, codebooks, keys]
        all_idx, all_dist = smallest(jnp.where(search_mask[None], jnp.inf, d), top_k)
        keep = certified[..., None]
        return jnp.where(keep, idx, all_idx), jnp.where(keep, dist, all_dist)

    return jax.lax.cond(jnp.sum(bad) > size, whole_chunk, lambda args: args, (idx, dist))
