"""Evaluating masked (unlearned) models from stored codes: only masked pairs get a new lookup.

Forgetting a class with UvA masks a few keys per codebook. An evaluation row's prediction
changes only through the codebooks where its stored code is one of them; there it falls back to
its nearest active key. :class:`StoredEval` holds, for the evaluation rows, the unmasked codes,
the `depth` nearest keys of every codebook (so most fallbacks are a lookup in that ranking) and
the queries (for the rare fallback beyond it: an exact search over that one codebook's keys).
An evaluation then costs a gather over the codes plus work proportional to the masked pairs,
not a search over every key for every row, which is what makes evaluating each of ImageNet's
1000 classes forgotten alone affordable.

The vote (mean of the retrieved values) is accumulated in fixed point: values are rounded once
to integers of `2**-scale_bits`, so every sum is exact and independent of its order. The same
store, split into blocks of codebooks, runs on one device or with one block per device of a
codebook mesh and gives bit-identical predictions: integer sums across devices are exact.
Rounding moves a logit by at most `2**-scale_bits / 2` per codebook, so it can only swap
classes whose float logits tie to within that.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dkvb_jax._progress import progress_bar
from dkvb_jax.exact.estimators import EstimatorConfig, derive_values
from dkvb_jax.exact.pair_counts import PairClassCounts
from dkvb_jax.parallel.mesh import CODEBOOK
from dkvb_jax.unlearning.selection import mask_top_n

# Fixed-point resolution of the vote: values are multiples of 2**-16, clipped at -64 (a log
# probability of e**-64; the absent-class value -1e4 stays the lowest), so a sum over 256
# codebooks stays within int32.
SCALE_BITS = 16
VALUE_FLOOR = -64.0
# Fallback searches over one codebook's keys run in chunks of this many (row, codebook) pairs.
_EXACT_CHUNK = 64
# Masked pairs whose value changes are gathered at once: [4096, 1000] int32, 16 MB.
_DELTA_CHUNK = 4096
DEFAULT_ESTIMATOR = EstimatorConfig()


class Caps(NamedTuple):
    """Static sizes of one evaluation (per block): masked pairs, fallbacks beyond the ranking,
    and affected rows (over all blocks)."""

    pairs: int
    exact: int
    rows: int


@flax.struct.dataclass
class StoredEval:
    """Evaluation rows' codes and what their fallbacks need, in blocks of codebooks.

    Leading axis `S` = blocks; `Cb` = codebooks per block. Block arrays are split over the
    mesh's ``'codebook'`` axis when one is given.

    Attributes:
      codes: int32 `[S, M, Cb]` unmasked top-1 codes of the `M` evaluation rows.
      ranked: int16/int32 `[S, M, Cb, depth]` their `depth` nearest keys, nearest first.
      queries: float32 `[S, M, Cb, key_dim]`.
      keys: float32 `[S, Cb, K, key_dim]`.
      values: int32 `[S, Cb, K, classes]` fixed-point values.
      base: int32 `[M, classes]` fixed-point vote sums of the unmasked model.
      labels: int32 `[M]`.
      pairs, counts: int32 `[S, L]` the statistics' entries (padded by the largest class).
      offsets: int32 `[S, classes + 1]`.
      class_span: largest entries of one class in one block (static).
    """

    codes: jax.Array
    ranked: jax.Array
    queries: jax.Array
    keys: jax.Array
    values: jax.Array
    base: jax.Array
    labels: jax.Array
    pairs: jax.Array
    counts: jax.Array
    offsets: jax.Array
    class_span: int = flax.struct.field(pytree_node=False)

    @property
    def num_blocks(self) -> int:
        return self.codes.shape[0]


BLOCK_FIELDS = ("codes", "ranked", "queries", "keys", "values", "pairs", "counts", "offsets")


def fixed_point(values: np.ndarray | jax.Array) -> jax.Array:
    """Values as int32 multiples of `2**-SCALE_BITS`, floored at `VALUE_FLOOR`."""
    v = jnp.maximum(jnp.asarray(values, jnp.float32), VALUE_FLOOR)
    return jnp.round(v * 2.0**SCALE_BITS).astype(jnp.int32)


def _vote_sums(values, codes):
    """int32 `[M, classes]`: sum over the block's codebooks of `values[b, codes[:, b]]`."""

    def add(acc, b):
        return acc + values[b][codes[:, b]], None

    # Started from codebook 0's values (not zeros), so the carry is per-device on a mesh.
    return jax.lax.scan(add, values[0][codes[:, 0]], jnp.arange(1, codes.shape[1]))[0]


# Codebooks whose values are derived at once: float32 [8, 4096, 1000] intermediates, 131 MB.
_DERIVE_CODEBOOKS = 8


def derive_fixed_point_values(
    stats: PairClassCounts,
    config: EstimatorConfig = DEFAULT_ESTIMATOR,
    *,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> jax.Array:
    """Fixed-point values int32 `[S, Cb, K, classes]` derived from `stats`, a few codebooks at a
    time, written in place (donated buffer), so no float32 `[C, K, classes]` table ever exists.

    Per codebook the estimator needs only that codebook's counts and which classes have any
    example at all; every example retrieves a key in every codebook, so a block's classes are
    all the classes, and the values equal :func:`dkvb_jax.exact.derive_values` of the whole
    table. Split over the mesh's ``'codebook'`` axis when `mesh` is given.
    """
    if config.codebook_weighting != "none":
        raise ValueError(
            "derive_fixed_point_values derives a few codebooks at a time, so it cannot normalise "
            "codebook weights over all codebooks; use EstimatorConfig(codebook_weighting='none')."
        )
    s, cb, k, y = stats.num_blocks, stats.block_codebooks, stats.num_keys, stats.num_classes
    shape = (s, cb, k, y)
    sharding = None if mesh is None else NamedSharding(mesh, P(CODEBOOK))
    buf = jax.jit(lambda: jnp.zeros(shape, jnp.int32), out_shardings=sharding)()
    step = max(d for d in range(1, min(_DERIVE_CODEBOOKS, cb) + 1) if cb % d == 0)

    @functools.partial(jax.jit, static_argnums=(1, 2), donate_argnums=0, out_shardings=sharding)
    def put(buf, block, start, counts):
        vals = fixed_point(derive_values(counts, config))
        return jax.lax.dynamic_update_slice(buf, vals[None], (block, start, 0, 0))

    starts = [(b, c) for b in range(s) for c in range(0, cb, step)]
    for b, c in progress_bar(starts, desc="values from counts", disable=not progress):
        buf = put(buf, b, c, jnp.asarray(stats.dense_block(b, c, c + step)))
    return buf


def build(
    stats: PairClassCounts,
    values: jax.Array,
    codes: np.ndarray,
    ranked: np.ndarray,
    queries: np.ndarray,
    keys: np.ndarray,
    labels: np.ndarray,
    *,
    mesh: Mesh | None = None,
) -> StoredEval:
    """Assembles a :class:`StoredEval` (block layout of `stats`), optionally on a mesh.

    Args:
      stats: the statistics, in `S` blocks (one per ``'codebook'`` device with a mesh).
      values: int32 `[S, Cb, K, classes]` from :func:`derive_fixed_point_values`.
      codes: int `[M, C]` unmasked codes; ranked: int `[M, C, depth]`;
      queries: float32 `[M, C, key_dim]`; keys: float32 `[C, K, key_dim]`; labels: int `[M]`.
      mesh: a mesh with a ``'codebook'`` axis of size `S`, or None for one device.
    """
    s = stats.num_blocks
    if mesh is not None and mesh.shape.get(CODEBOOK, 1) != s:
        raise ValueError(
            f"the statistics have {s} codebook blocks but the mesh's '{CODEBOOK}' axis has "
            f"{mesh.shape.get(CODEBOOK, 1)} devices; count them with num_blocks equal to it."
        )
    if values.shape[:2] != (s, stats.block_codebooks):
        raise ValueError(
            f"values must have shape [blocks={s}, codebooks per block="
            f"{stats.block_codebooks}, keys, classes], got {tuple(values.shape)}."
        )

    def blocks(a, axis):
        return np.stack(np.split(np.asarray(a), s, axis=axis))

    span = max(1, int(np.diff(stats.offsets, axis=1).max()))
    # Padded by one class span so a dynamic slice starting at any class never clamps.
    length = max(p.size for p in stats.pairs) + span
    arrays = dict(
        codes=blocks(codes.astype(np.int32), 1),
        ranked=blocks(ranked, 1),
        queries=blocks(queries, 1),
        keys=blocks(keys, 0),
        pairs=np.stack([np.pad(p, (0, length - p.size)) for p in stats.pairs]),
        counts=np.stack(
            [np.pad(c.astype(stats.counts[0].dtype), (0, length - c.size)) for c in stats.counts]
        ),
        offsets=stats.offsets.astype(np.int32),
    )
    if mesh is None:
        put = {k: jnp.asarray(v) for k, v in arrays.items()}
        labels_d = jnp.asarray(labels, jnp.int32)
    else:
        shard = NamedSharding(mesh, P(CODEBOOK))
        put = {k: jax.device_put(v, shard) for k, v in arrays.items()}
        labels_d = jax.device_put(np.asarray(labels, np.int32), NamedSharding(mesh, P()))
    base = vote_sums(values, put["codes"], mesh)
    return StoredEval(**put, values=values, base=base, labels=labels_d, class_span=span)


@functools.partial(jax.jit, static_argnames=("mesh",))
def vote_sums(values: jax.Array, codes: jax.Array, mesh=None) -> jax.Array:
    """Fixed-point vote sums int32 `[M, classes]` of block values and block codes `[S, M, Cb]`."""
    return _blocks_sum(mesh, jax.vmap(_vote_sums), (values, codes))


def with_values(store: StoredEval, values: jax.Array, mesh=None) -> StoredEval:
    """The store with other values (e.g. after an exact removal): base sums recomputed."""
    return store.replace(values=values, base=vote_sums(values, store.codes, mesh))


def _blocks_sum(mesh, fn, block_args, shared=()):
    """Sum over blocks of `fn(*block_args, *shared)` (block args carry a leading block axis of
    which `fn` sees one entry, shared args are whole): a scan on one device, a `psum` over
    ``'codebook'`` on a mesh. Integer results, so both give the same, exact sum."""
    if mesh is None:

        def one(args):
            return fn(*(a[None] for a in args), *shared)[0]

        first = one(tuple(a[0] for a in block_args))
        if block_args[0].shape[0] == 1:
            return first
        rest = tuple(a[1:] for a in block_args)
        return jax.lax.scan(lambda acc, args: (acc + one(args), None), first, rest)[0]

    def local(*args):
        return jax.lax.psum(fn(*args)[0], CODEBOOK)

    specs = tuple(P(CODEBOOK) for _ in block_args) + tuple(P() for _ in shared)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())(*block_args, *shared)


def class_block_histogram(pairs, counts, offsets, label, span: int, shape: tuple[int, int]):
    """One block's usage histogram of class `label`, int32 `[Cb, K]`, from its entries."""
    lo = offsets[label]
    n = offsets[label + 1] - lo
    p = jax.lax.dynamic_slice(pairs, (lo,), (span,))
    c = jnp.where(jnp.arange(span) < n, jax.lax.dynamic_slice(counts, (lo,), (span,)), 0)
    return jnp.zeros(shape[0] * shape[1], jnp.int32).at[p].add(c).reshape(shape)


def uva_selection(store: StoredEval, label, n: int) -> jax.Array:
    """UvA's selection for forgetting class `label`: bool `[S, Cb, K]`, each block's top `n`."""
    shape = store.keys.shape[1:3]

    def one(pairs, counts, offsets):
        hist = class_block_histogram(pairs, counts, offsets, label, store.class_span, shape)
        return mask_top_n(hist, n)

    return jax.vmap(one)(store.pairs, store.counts, store.offsets)


def _hits(sel, codes):
    """bool `[M, Cb]`: the rows' stored code in each codebook is selected."""
    return sel[jnp.arange(codes.shape[1])[None], codes]


def _exact_nearest(q, keys_b, sel_b):
    """Nearest unselected key of each pair's codebook: q `[U, d]`, keys_b `[U, K, d]`."""
    d = jnp.sum(jnp.square(q[:, None, :] - keys_b), axis=-1)
    return jnp.argmin(jnp.where(sel_b, jnp.inf, d), axis=-1).astype(jnp.int32)


def _block_delta(sel, codes, ranked, queries, keys, values, slot, caps: Caps):
    """One block's change of the vote sums of the affected rows, int32 `[rows cap, classes]`.

    Also returns the block's counts of masked pairs and of fallbacks beyond the ranking.
    """
    hit = _hits(sel, codes)
    num_hits = hit.sum()
    r, b = jnp.nonzero(hit, size=caps.pairs, fill_value=0)
    live = jnp.arange(caps.pairs) < num_hits
    rk = ranked[r, b].astype(jnp.int32)  # [P, depth]
    active = ~sel[b[:, None], rk]
    found = active.any(-1)
    new = jnp.take_along_axis(rk, jnp.argmax(active, -1)[:, None], -1)[:, 0]
    beyond = live & ~found
    num_beyond = beyond.sum()
    (u,) = jnp.nonzero(beyond, size=caps.exact, fill_value=caps.pairs)
    ur, ub = r.at[u].get(mode="fill", fill_value=0), b.at[u].get(mode="fill", fill_value=0)
    chunks = caps.exact // _EXACT_CHUNK
    exact = jax.lax.map(
        lambda a: _exact_nearest(queries[a[0], a[1]], keys[a[1]], sel[a[1]]),
        (ur.reshape(chunks, -1), ub.reshape(chunks, -1)),
    ).reshape(-1)
    new = new.at[u].set(exact, mode="drop")
    old = codes[r, b]
    target = jnp.where(live, slot[r], caps.rows)
    # Pairs in chunks, so the gathered values stay [chunk, classes] whatever the cap.
    step = min(caps.pairs, _DELTA_CHUNK)

    def add(delta, chunk):
        cb, new_, old_, to = chunk
        return delta.at[to].add(values[cb, new_] - values[cb, old_], mode="drop"), None

    # The zeros take a (zero) term of `values` so that, on a mesh, the carry is per-device too.
    zeros = jnp.zeros((caps.rows, values.shape[-1]), jnp.int32) + 0 * values[0, 0, 0]
    chunks = tuple(a.reshape(-1, step) for a in (b, new, old, target))
    delta = jax.lax.scan(add, zeros, chunks)[0]
    overflow = (num_hits > caps.pairs) | (num_beyond > caps.exact)
    return delta, jnp.stack([num_hits, num_beyond, overflow]).astype(jnp.int32)


def _row_flags(sel, codes):
    return _hits(sel, codes).any(axis=1).astype(jnp.int32)


def _evaluate(store: StoredEval, sel, caps: Caps, mesh):
    """bool `[M]` correct predictions under selection `sel` `[S, Cb, K]`, and sizes used."""
    flags = _blocks_sum(mesh, jax.vmap(_row_flags), (sel, store.codes))
    affected = flags > 0
    num_rows = affected.sum()
    (rows,) = jnp.nonzero(affected, size=caps.rows, fill_value=0)
    live = jnp.arange(caps.rows) < num_rows
    slot = (
        jnp.full(affected.shape, caps.rows, jnp.int32)
        .at[jnp.where(live, rows, affected.shape[0])]
        .set(jnp.arange(caps.rows, dtype=jnp.int32), mode="drop")
    )

    def block(sel, codes, ranked, queries, keys, values, slot):
        delta, sizes = jax.vmap(lambda *a: _block_delta(*a, slot, caps))(
            sel, codes, ranked, queries, keys, values
        )
        # The sizes ride along as an extra row, so one exact integer sum carries both.
        extra = jnp.zeros((delta.shape[0], 1, delta.shape[2]), jnp.int32).at[:, 0, :3].set(sizes)
        return jnp.concatenate([delta, extra], axis=1)

    blocks = (sel, store.codes, store.ranked, store.queries, store.keys, store.values)
    out = _blocks_sum(mesh, block, blocks, (slot,))
    delta, sizes = out[:-1], out[-1, :3]
    logits = store.base[rows] + delta
    correct_rows = logits.argmax(-1) == store.labels[rows]
    correct = (
        base_correct(store)
        .at[jnp.where(live, rows, affected.shape[0])]
        .set(correct_rows, mode="drop")
    )
    overflow = sizes[2] + (num_rows > caps.rows)
    return correct, Sizes(sizes[0], sizes[1], num_rows, overflow)


class Sizes(NamedTuple):
    """What one evaluation touched: masked (row, codebook) pairs and fallbacks beyond the
    ranking (summed over blocks), affected rows, and a count of overflowed caps (must be 0)."""

    pairs: jax.Array
    exact: jax.Array
    rows: jax.Array
    overflow: jax.Array


def block_sizes(store: StoredEval, selection: jax.Array) -> jax.Array:
    """int32 `[S, 2]`: each block's masked pairs and fallbacks beyond the ranking, and the
    affected rows `[]`, for choosing :class:`Caps`."""

    def one(sel, codes, ranked):
        hit = _hits(sel, codes)
        cb = jnp.arange(codes.shape[1])[None, :, None]
        beyond = hit & sel[cb, ranked.astype(jnp.int32)].all(-1)
        return jnp.stack([hit.sum(), beyond.sum()]), hit.any(1)

    per_block, rows = jax.lax.map(lambda a: one(*a), (selection, store.codes, store.ranked))
    return per_block, rows.any(0).sum()


def make_caps(pairs: int, exact: int, rows: int) -> Caps:
    """:class:`Caps` at least as large as given: powers of two, so few shapes compile."""

    def up(x):  # powers of two, at least one fallback chunk
        return max(_EXACT_CHUNK, 1 << (max(int(x), 1) - 1).bit_length())

    return Caps(pairs=up(pairs), exact=up(exact), rows=up(rows))


@functools.partial(jax.jit, static_argnames=("caps", "mesh"))
def evaluate_selection(store: StoredEval, selection: jax.Array, caps: Caps, mesh=None):
    """Correct predictions of every evaluation row with `selection` masked.

    Args:
      store: the :class:`StoredEval`.
      selection: bool `[S, Cb, K]` pairs to mask (search mode: rows fall back to their nearest
        active key).
      caps: static sizes; the returned sizes must not exceed them (see :func:`check_caps`).
      mesh: the store's mesh, or None.

    Returns:
      bool `[M]` correct, and the :class:`Sizes` it touched; `sizes.overflow` must be 0, else
      a cap was too small and the result is incomplete (:func:`evaluate` checks it).
    """
    return _evaluate(store, selection, caps, mesh)


@functools.partial(jax.jit, static_argnames=("n", "caps", "mesh"))
def evaluate_uva(store: StoredEval, label, n: int, caps: Caps, mesh=None):
    """:func:`evaluate_selection` of UvA forgetting class `label` with `n` keys per codebook."""
    return _evaluate(store, uva_selection(store, label, n), caps, mesh)


def base_correct(store: StoredEval) -> jax.Array:
    """bool `[M]` correct predictions of the unmasked model."""
    return store.base.argmax(-1) == store.labels
