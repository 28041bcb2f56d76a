"""Per-block kernels of :mod:`dkvb_jax.unlearning.stored_eval`, and the sum over blocks.

Each kernel works on one block of codebooks (`Cb` of them) and returns its part of a sum over
blocks plus per-block outputs; :func:`over_blocks` runs it on every block, as a scan on one
device or one block per device of a ``'codebook'`` mesh with a `psum`. Every part is an
integer, so both orders give the same, exact sum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dkvb_jax.parallel.mesh import CODEBOOK
from dkvb_jax.unlearning.compaction import compact

# Fallback searches over one codebook's keys run in chunks of this many (row, codebook) pairs.
EXACT_CHUNK = 64
# Masked pairs whose value changes are gathered at once: [4096, 1000] int32, 16 MB.
DELTA_CHUNK = 4096
# Undecided rows whose exact logits are summed at once: [8192, 1000] int32, 32 MB per device
# (all 65,536 rows at once at ImageNet size was 262 MB per device, 2 GB on 8 devices).
ROW_CHUNK = 8192


class Caps(NamedTuple):
    """Static sizes of one evaluation: per block, masked pairs (`pairs`), fallbacks beyond the
    ranking (`exact`) and masked pairs of undecided rows (`row_pairs`); over all blocks, the
    rows left undecided by the bounds (`rows`), whose exact logits are summed `row_chunk` rows
    at a time."""

    pairs: int
    exact: int
    rows: int
    row_pairs: int
    row_chunk: int = ROW_CHUNK


def vote_sums(values, codes):
    """int32 `[M, classes]`: sum over the block's codebooks of `values[b, codes[:, b]]`."""

    def add(acc, b):
        return acc + values[b][codes[:, b]], None

    # Started from codebook 0's values (not zeros), so the carry is per-device on a mesh.
    return jax.lax.scan(add, values[0][codes[:, 0]], jnp.arange(1, codes.shape[1]))[0]


def over_blocks(mesh, fn, block_args, shared=()):
    """`fn(*block, *shared)` on each block (block args carry a leading block axis, shared args
    are whole); `fn` returns `(part, own)`. Returns the sum of the parts over blocks and the
    `own` outputs stacked along a block axis: a scan on one device, a `psum` over
    ``'codebook'`` on a mesh. Integer parts, so both give the same, exact sum."""
    if mesh is None:
        first, own0 = fn(*(a[0] for a in block_args), *shared)

        def step(acc, args):
            part, own = fn(*args, *shared)
            return acc + part, own

        total, own = jax.lax.scan(step, first, tuple(a[1:] for a in block_args))
        return total, jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), own0, own)

    nb = len(block_args)

    def local(*args):
        if args[0].shape[0] == 1:
            # One block per device: called directly, since under vmap a while_loop (as in
            # block_delta) selects its whole carry at every step.
            part, own = fn(*(a[0] for a in args[:nb]), *args[nb:])
            return jax.lax.psum(part, CODEBOOK), jax.tree.map(lambda a: a[None], own)
        part, own = jax.vmap(fn, in_axes=(0,) * nb + (None,) * len(shared))(*args)
        return jax.lax.psum(part.sum(0), CODEBOOK), own

    specs = tuple(P(CODEBOOK) for _ in block_args) + tuple(P() for _ in shared)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), P(CODEBOOK)))(
        *block_args, *shared
    )


def hits(sel, codes):
    """bool `[M, Cb]`: the rows' stored code in each codebook is selected."""
    return sel[jnp.arange(codes.shape[1])[None], codes]


def exact_nearest(q, keys_b, sel_b):
    """Nearest unselected key of each pair's codebook: q `[U, d]`, keys_b `[U, K, d]`."""
    d = jnp.sum(jnp.square(q[:, None, :] - keys_b), axis=-1)
    return jnp.argmin(jnp.where(sel_b, jnp.inf, d), axis=-1).astype(jnp.int32)


def block_pairs(sel, codes, ranked, queries, keys, caps: Caps):
    """One block's masked pairs `[caps.pairs]`, in row order: rows, codebooks, stored and new
    codes, live; and int32 `[4]`: masked pairs, fallbacks beyond the ranking, and their
    overflows."""
    flat, num_hits = compact(hits(sel, codes).reshape(-1), caps.pairs)
    live = jnp.arange(caps.pairs) < num_hits
    flat = jnp.where(live, flat, 0)
    r, b = flat // codes.shape[1], flat % codes.shape[1]
    rk = ranked[r, b].astype(jnp.int32)  # [P, depth]
    active = ~sel[b[:, None], rk]
    new = jnp.take_along_axis(rk, jnp.argmax(active, -1)[:, None], -1)[:, 0]
    u, num_beyond = compact(live & ~active.any(-1), caps.exact)
    ur, ub = r.at[u].get(mode="fill", fill_value=0), b.at[u].get(mode="fill", fill_value=0)
    chunks = caps.exact // EXACT_CHUNK
    exact = jax.lax.map(
        lambda a: exact_nearest(queries[a[0], a[1]], keys[a[1]], sel[a[1]]),
        (ur.reshape(chunks, -1), ub.reshape(chunks, -1)),
    ).reshape(-1)
    new = new.at[u].set(exact, mode="drop")
    sizes = [num_hits, num_beyond, num_hits > caps.pairs, num_beyond > caps.exact]
    return (r, b, codes[r, b], new, live), jnp.stack(sizes).astype(jnp.int32)


def block_moves(sel, codes, ranked, queries, keys, values, top, floor, labels, rival, caps):
    """One block's part of each row's moves, int32 `[M, 4]`: of the label's logit, of the
    runner-up's, the bound on any class's, and the row's masked pairs; and its pairs."""
    pairs, sizes = block_pairs(sel, codes, ranked, queries, keys, caps)
    r, b, old, new, live = pairs
    y, j = labels[r], rival[r]
    dy, dj = values[b, new, y] - values[b, old, y], values[b, new, j] - values[b, old, j]
    bound = jnp.maximum(top[b, new] - floor[b, old], 0)
    moves = jnp.stack([dy, dj, bound, jnp.ones_like(r)], axis=-1)
    to = jnp.where(live, r, codes.shape[0])
    moves = jnp.zeros((codes.shape[0], 4), jnp.int32).at[to].add(moves, mode="drop")
    return moves, (pairs, sizes)


def block_row_pairs(r, b, old, new, live, slot, caps: Caps):
    """One block's masked pairs of the undecided rows (slot `slot[r]` < `caps.rows`),
    compacted: int32 codebooks, new and old codes and slots, `[caps.row_pairs + step]` each
    with slots ascending (pairs come in row order, slots are given in row order) and padded
    past the end with slot `caps.rows`; int32 `[2]`: those pairs, and whether they overflowed.
    Returned as `(count, (pairs, sizes))`, for :func:`over_blocks`."""
    to = jnp.where(live, slot[r], caps.rows)
    u, num = compact(to < caps.rows, caps.row_pairs)
    pad = min(caps.row_pairs, DELTA_CHUNK)  # so a step's slice never runs off the end
    u = jnp.pad(u, (0, pad), constant_values=r.shape[0])
    got = tuple(a.at[u].get(mode="fill", fill_value=0) for a in (b, new, old))
    got += (to.at[u].get(mode="fill", fill_value=caps.rows),)
    return num, (got, jnp.stack([num, num > caps.row_pairs]).astype(jnp.int32))


def block_delta(b, new, old, to, values, lo, caps: Caps):
    """One block's change of the vote sums of the undecided rows in slots `[lo, lo +
    caps.row_chunk)`, int32 `[row_chunk, classes]`: the value differences of their changed
    pairs (from :func:`block_row_pairs`), gathered a step of pairs at a time."""
    chunk, step = min(caps.rows, caps.row_chunk), min(caps.row_pairs, DELTA_CHUNK)
    start, end = jnp.searchsorted(to, jnp.stack([lo, lo + chunk])).astype(jnp.int32)

    def add(carry):
        i, delta = carry
        cb, new_, old_, to_ = (jax.lax.dynamic_slice(a, (i,), (step,)) for a in (b, new, old, to))
        # Pairs of later chunks in the last step fall past the end and are dropped.
        delta = delta.at[to_ - lo].add(values[cb, new_] - values[cb, old_], mode="drop")
        return i + step, delta

    # The zeros take a (zero) term of `values` so that, on a mesh, the carry is per-device too.
    zeros = jnp.zeros((chunk, values.shape[-1]), jnp.int32) + 0 * values[0, 0, 0]
    return jax.lax.while_loop(lambda c: c[0] < end, add, (start, zeros))[1]
