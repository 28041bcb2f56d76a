"""Nearest-key lookup among the active keys of each codebook.

The distance tensor `[batch, codebooks, keys]` is the only large intermediate of a DKVB model
(1 GiB of float32 at the paper's batch 256 x 256 codebooks x 4096 keys). `nearest_keys`
computes it in row chunks with `lax.map`, so peak memory is set by the chunk, not the batch;
each chunk runs exactly the computation the unchunked path runs on those rows.

The search is chosen per backend: on CPU the two-stage ``blocked`` search (float32 matmuls at
`Precision.HIGHEST`, which a TPU would run as six bfloat16 passes); on GPU and TPU the
``rerank`` search of :mod:`dkvb_jax.model.rerank` (one bfloat16 pass on the matmul units, an
exact float32 re-rank, and a proven-exact fallback). All return the exact nearest keys.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dkvb_jax.model import rerank as rerank_lib


class Lookup(NamedTuple):
    """Result of a nearest-key lookup.

    Attributes:
      indices: int32 `[batch, codebooks, top_k]`, nearest active keys in increasing distance;
        -1 where `valid` is False.
      distances: float32 `[batch, codebooks, top_k]` squared distances; +inf where invalid.
      valid: bool `[batch, codebooks, top_k]`; False when a codebook has fewer than `top_k`
        active keys (all-masked codebooks are entirely invalid).
    """

    indices: jax.Array
    distances: jax.Array
    valid: jax.Array


def squared_distances(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """Squared Euclidean distances in matmul form.

    Args:
      queries: `[batch, codebooks, key_dim]`.
      keys: `[codebooks, keys, key_dim]`.

    Returns:
      `[batch, codebooks, keys]`; |q|^2 - 2 q.k + |k|^2, clipped at 0 against rounding.
    """
    q2 = jnp.sum(queries * queries, axis=-1)[..., None]
    k2 = jnp.sum(keys * keys, axis=-1)[None]
    qk = jnp.einsum("bcd,ckd->bck", queries, keys, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(q2 - 2.0 * qk + k2, 0.0)


METHODS: tuple[str, ...] = ("auto", "blocked", "dense", "approx", "rerank")
# Backends whose matmul units (TPU MXU, GPU tensor cores) make the ``rerank`` search the default.
ACCELERATOR_BACKENDS: tuple[str, ...] = ("gpu", "tpu", "cuda", "rocm")

# Keys per block of the blocked search. 32 keeps the exact re-ranking of the winning block at
# 1/128 of the search work for the paper's 4096 keys.
DEFAULT_BLOCK = 32
# Keys scored per stage-1 step (a whole number of blocks): one matmul over this many keys, then
# the minimum of each block in it. Fewer, larger steps amortise the loop's per-step overhead;
# 256 measured best on a 2-core CPU (128: -20%, 512: -5%).
DEFAULT_STEP_KEYS = 256
# Codebooks searched together: their queries stay in cache while their keys stream through
# (4 measured as good as or better than 8, 16 and all 256 on the paper setting).
DEFAULT_GROUP = 4
# Candidates per codebook that the ``rerank`` search scores exactly.
DEFAULT_CANDIDATES = 16


def auto_chunk(num_codebooks: int, num_keys: int, memory_mb: float) -> int:
    """Rows per chunk so that one chunk of float32 distances fits in `memory_mb` MiB."""
    row_bytes = 4 * num_codebooks * num_keys
    return max(1, int(memory_mb * 2**20) // row_bytes)


def _blocks_per_step(num_blocks: int, block: int, step_keys: int = DEFAULT_STEP_KEYS) -> int:
    """Largest divisor of `num_blocks` whose blocks hold at most `step_keys` keys (at least 1)."""
    target = max(1, step_keys // block)
    return max(s for s in range(1, min(target, num_blocks) + 1) if num_blocks % s == 0)


def _blocked_row_bytes(
    num_codebooks: int, num_keys: int, key_dim: int, top_k: int, block: int, group: int
) -> int:
    """Bytes per query row of the blocked search.

    Per row: the transposed queries and the outputs of all codebooks, plus one group's block
    minima, one stage-1 step's scores and the gathered candidate distances (groups are searched
    one after another).
    """
    num_blocks = -(-num_keys // block)
    step = _blocks_per_step(num_blocks, block) * block
    per_group = group * (num_blocks + step + top_k * block * (key_dim + 3))
    return 4 * (num_codebooks * (key_dim + 2 * top_k) + per_group)


def _dense_rows(queries, keys, search_mask, top_k):
    d = squared_distances(queries, keys)
    return rerank_lib.smallest(jnp.where(search_mask[None], jnp.inf, d), top_k)


def _approx_rows(queries, keys, search_mask, top_k, recall_target):
    d = squared_distances(queries, keys)
    d = jnp.where(search_mask[None], jnp.inf, d)
    dist, idx = jax.lax.approx_min_k(d, top_k, recall_target=recall_target)
    return idx.astype(jnp.int32), dist


def _blocked_group(qc, kc, k2c, top_k, block):
    """Two-stage exact search of one group of codebooks over keys split into blocks.

    Stage 1 takes the minimum of every block of `|k|^2 - 2 q.k` (the squared distance less the
    per-query constant `|q|^2`): one matmul per step of several blocks, reduced at once, so the
    `[rows, codebooks, keys]` scores never reach memory. Stage 2 recomputes the distances of
    the `top_k` best blocks as direct differences `sum((q - k)^2)` (no cancellation, so closer
    to the true distance than the matmul form) and selects among them. The `top_k` nearest keys
    always lie in those blocks: a key outside them is beaten by the minimum of each of `top_k`
    blocks, ordering by (distance, index) so that ties go to the lower block.

    Keys stay in their `[codebooks, keys, key_dim]` layout (a step is a slice of it), so no
    per-call copy of the keys is made.

    Args:
      qc: queries `[group, rows, key_dim]`.
      kc: keys `[group, padded keys, key_dim]`, padded to whole blocks.
      k2c: `[group, padded keys]`, `|k|^2`, +inf for masked and padding keys.
      top_k: keys returned per codebook.
      block: keys per block.

    Returns:
      int32 indices and float32 distances `[group, rows, top_k]`.
    """
    group, rows, key_dim = qc.shape
    num_blocks = kc.shape[1] // block
    steps = _blocks_per_step(num_blocks, block)
    span = steps * block
    # -2 q.k exactly: scaling by a power of two commutes with every rounding.
    q2 = -2.0 * qc

    def step_min(args):
        ks, kk2 = args  # [group, span, key_dim], [group, span]
        s = jax.lax.dot_general(
            q2, ks, (((2,), (2,)), ((0,), (0,))), precision=jax.lax.Precision.HIGHEST
        )  # [group, rows, span]
        return jnp.min((s + kk2[:, None]).reshape(group, rows, steps, block), axis=-1)

    ks = kc.reshape(group, num_blocks // steps, span, key_dim).swapaxes(0, 1)
    kk2 = k2c.reshape(group, num_blocks // steps, span).swapaxes(0, 1)
    mins = jax.lax.map(step_min, (ks, kk2))  # [num_steps, group, rows, steps]
    mins = mins.transpose(1, 2, 0, 3).reshape(group, rows, num_blocks)
    if top_k == 1:
        best = jnp.argmin(mins, axis=-1)[..., None]  # [group, rows, 1]
    else:
        # With fewer blocks than top_k every block is a candidate.
        best = jax.lax.top_k(-mins, min(top_k, num_blocks))[1]
        # In block order, candidate positions follow key indices, so ties keep the lower key.
        best = jnp.sort(best, axis=-1)
    cb = jnp.arange(group)[:, None, None]
    kg = kc.reshape(group, num_blocks, block, key_dim)[cb, best]  # [g, rows, cand, block, dim]
    d = rerank_lib.direct_distances(qc[:, :, None, None], kg)
    excluded = jnp.isinf(k2c.reshape(group, num_blocks, block)[cb, best])
    d = jnp.where(excluded, jnp.inf, d).reshape(group, rows, best.shape[-1] * block)
    if top_k == 1:
        pos = jnp.argmin(d, axis=-1)[..., None]
        dist = jnp.take_along_axis(d, pos, axis=-1)
    else:
        neg, pos = jax.lax.top_k(-d, top_k)
        dist = -neg
    idx = jnp.take_along_axis(best, pos // block, axis=-1) * block + pos % block
    return idx.astype(jnp.int32), dist


def _blocked_rows(queries, keys, k2_masked, top_k, block, group):
    """`_blocked_group` over groups of codebooks: `[rows, codebooks, top_k]` indices, distances.

    Groups keep one group's queries cache-resident while its keys stream through once.
    """
    rows, num_codebooks, key_dim = queries.shape
    num_groups = num_codebooks // group
    qg = queries.transpose(1, 0, 2).reshape(num_groups, group, rows, key_dim)
    kg = keys.reshape(num_groups, group, -1, key_dim)
    k2g = k2_masked.reshape(num_groups, group, -1)
    idx, dist = jax.lax.map(lambda a: _blocked_group(*a, top_k, block), (qg, kg, k2g))
    shape = (num_codebooks, rows, -1)
    return idx.reshape(shape).transpose(1, 0, 2), dist.reshape(shape).transpose(1, 0, 2)


def _codebook_group(num_codebooks: int, target: int) -> int:
    """Largest divisor of `num_codebooks` not above `target`."""
    return max(g for g in range(1, min(target, num_codebooks) + 1) if num_codebooks % g == 0)


def _pad_to_blocks(keys, search_mask, block):
    """Keys padded to whole blocks and `|k|^2` with +inf for masked and padding keys."""
    pad = -keys.shape[1] % block
    if pad:
        keys = jnp.pad(keys, ((0, 0), (0, pad), (0, 0)))
        search_mask = jnp.pad(search_mask, ((0, 0), (0, pad)), constant_values=True)
    k2 = jnp.sum(keys * keys, axis=-1)
    return keys, jnp.where(search_mask, jnp.inf, k2)


def resolve_method(method: str, num_keys: int, block: int, backend: str | None = None) -> str:
    """The search `method` actually used.

    ``auto`` is ``rerank`` on a GPU or TPU `backend` (default: `jax.default_backend()`), whose
    matmul units do the bfloat16 first stage at full rate; elsewhere ``blocked`` unless there are
    few blocks, then ``dense``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if method != "auto":
        return method
    backend = jax.default_backend() if backend is None else backend
    if backend in ACCELERATOR_BACKENDS:
        return "rerank"
    return "blocked" if num_keys >= 4 * block else "dense"


def _check_arguments(queries, keys, search_mask, top_k, block, candidates):
    """Validates the arguments of :func:`nearest_keys`; returns the mask and candidate count."""
    _, num_codebooks, key_dim = queries.shape
    if keys.ndim != 3 or keys.shape[0] != num_codebooks or keys.shape[2] != key_dim:
        raise ValueError(
            f"keys must have shape [codebooks={num_codebooks}, keys, key_dim={key_dim}] to match "
            f"queries {tuple(queries.shape)}, got {tuple(keys.shape)}."
        )
    num_keys = keys.shape[1]
    if not 1 <= top_k <= num_keys:
        raise ValueError(f"top_k must be in [1, num_keys={num_keys}], got {top_k}.")
    if search_mask is None:
        search_mask = jnp.zeros((num_codebooks, num_keys), bool)
    elif search_mask.shape != (num_codebooks, num_keys):
        raise ValueError(
            f"search_mask must have shape [codebooks, keys] = {(num_codebooks, num_keys)}, got "
            f"{tuple(search_mask.shape)}."
        )
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}.")
    if candidates is None:
        candidates = max(DEFAULT_CANDIDATES, 2 * top_k)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < top_k:
        raise ValueError(
            f"candidates must be None or an integer >= top_k={top_k}, got {candidates!r}."
        )
    return search_mask, candidates


def nearest_keys(
    queries: jax.Array,
    keys: jax.Array,
    search_mask: jax.Array | None = None,
    *,
    top_k: int = 1,
    chunk: int | None = 0,
    memory_mb: float = 64.0,
    method: str = "auto",
    block: int = DEFAULT_BLOCK,
    codebook_group: int = DEFAULT_GROUP,
    recall_target: float = 0.95,
    candidates: int | None = None,
) -> Lookup:
    """Finds the `top_k` nearest active keys of every codebook for every query.

    Args:
      queries: float `[batch, codebooks, key_dim]`.
      keys: float `[codebooks, keys, key_dim]`.
      search_mask: bool `[codebooks, keys]`, True for keys excluded from the search.
      top_k: keys returned per codebook, in increasing distance (ties: lower index first).
      chunk: rows of `queries` processed at once; `None` derives it from `memory_mb`, `0`
        computes the whole batch at once. Any chunk works: the last one is padded.
      memory_mb: budget for one chunk's intermediates when `chunk` is None.
      method: ``blocked`` (exact two-stage search that never materialises the distance
        tensor; the fastest on CPU), ``dense`` (exact, materialises the distances of a chunk),
        ``approx`` (`jax.lax.approx_min_k`, approximate on TPU with `recall_target`; exact
        elsewhere), ``rerank`` (exact: bfloat16 distances on the matmul units pick `candidates`
        keys, float32 re-ranks them, and pairs whose bfloat16 error bound leaves a doubt are
        searched exactly; made for GPU and TPU), or ``auto`` (``rerank`` on GPU and TPU; on
        CPU ``blocked`` when there are at least 4 blocks, else ``dense``). The exact methods
        return the same keys, up to float32 rounding of near-equal distances.
      block: keys per block of the ``blocked`` method.
      codebook_group: codebooks searched together by the ``blocked`` method (the largest
        divisor of the number of codebooks not above it).
      recall_target: recall of the ``approx`` method.
      candidates: keys per codebook re-ranked in float32 by the ``rerank`` method (at least
        `top_k`; `None`: the larger of 16 and `2 * top_k`). More candidates make the exact
        fallback rarer; any value gives the exact result.

    Returns:
      A :class:`Lookup` of `[batch, codebooks, top_k]` arrays.
    """
    batch, num_codebooks, key_dim = queries.shape
    search_mask, candidates = _check_arguments(queries, keys, search_mask, top_k, block, candidates)
    num_keys = keys.shape[1]
    block = min(block, num_keys)
    method = resolve_method(method, num_keys, block)
    if chunk is None:
        if method == "blocked":
            group = _codebook_group(num_codebooks, codebook_group)
            row = _blocked_row_bytes(num_codebooks, num_keys, key_dim, top_k, block, group)
            chunk = max(1, int(memory_mb * 2**20) // row)
        elif method == "rerank":
            # The bfloat16 products and the lower bounds are both `[rows, codebooks, keys]`.
            chunk = auto_chunk(num_codebooks, num_keys, memory_mb / 2)
        else:
            chunk = auto_chunk(num_codebooks, num_keys, memory_mb)
    if chunk < 0:
        raise ValueError(f"chunk must be None, 0 or positive, got {chunk}.")

    if method == "blocked":
        padded, k2_masked = _pad_to_blocks(keys, search_mask, block)
        group = _codebook_group(num_codebooks, codebook_group)

        def rows_fn(q):
            return _blocked_rows(q, padded, k2_masked, top_k, block, group)
    elif method == "rerank":
        prepared = rerank_lib.prepare(keys)

        def rows_fn(q):
            return rerank_lib.search_rows(q, keys, search_mask, prepared, top_k, candidates)[:2]
    elif method == "dense":

        def rows_fn(q):
            return _dense_rows(q, keys, search_mask, top_k)
    else:

        def rows_fn(q):
            return _approx_rows(q, keys, search_mask, top_k, recall_target)

    if chunk == 0 or chunk >= batch:
        idx, dist = rows_fn(queries)
    else:
        # Full chunks go through lax.map; the remainder is one smaller call. Both run the row
        # function on whole sub-batches, so the result is independent of the chunking.
        full = (batch // chunk) * chunk
        idx, dist = jax.lax.map(rows_fn, queries[:full].reshape(-1, chunk, num_codebooks, key_dim))
        idx = idx.reshape(full, num_codebooks, top_k)
        dist = dist.reshape(full, num_codebooks, top_k)
        if full < batch:
            ridx, rdist = rows_fn(queries[full:])
            idx = jnp.concatenate([idx, ridx])
            dist = jnp.concatenate([dist, rdist])

    num_active = num_keys - jnp.sum(search_mask, axis=-1)  # [codebooks]
    valid = jnp.arange(top_k)[None, None, :] < num_active[None, :, None]
    valid = jnp.broadcast_to(valid, idx.shape)
    return Lookup(
        indices=jnp.where(valid, idx, -1),
        distances=jnp.where(valid, dist, jnp.inf),
        valid=valid,
    )


def lookup_flops(batch: int, num_codebooks: int, num_keys: int, key_dim: int) -> int:
    """Multiply-add FLOPs of the distance computation (2 per multiply-accumulate)."""
    return 2 * batch * num_codebooks * num_keys * key_dim


def num_chunks(batch: int, chunk: int) -> int:
    return 1 if chunk == 0 else math.ceil(batch / chunk)
