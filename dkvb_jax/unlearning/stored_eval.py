"""Evaluating masked (unlearned) models from stored codes: only masked pairs get a new lookup.

Forgetting a class with UvA masks a few keys per codebook. An evaluation row's prediction
changes only through the codebooks where its stored code is one of them; there it falls back to
its nearest active key. :class:`StoredEval` holds, for the evaluation rows, the unmasked codes,
the `depth` nearest keys of every codebook (so most fallbacks are a lookup in that ranking) and
the queries (for the rare fallback beyond it: an exact search over that one codebook's keys).

Most affected rows need no new logits either: each changed pair moves the label's logit and the
runner-up's by known amounts, and any class's by at most `max value of the new key - min value
of the old key`. A row whose label beats that bound stays right, one whose runner-up overtakes
the label goes wrong; only the rows left undecided get full `[classes]` logits, a chunk of rows
at a time (so the sum is `[row_chunk, classes]` per device, whatever their number). The vote is
summed in fixed point (:func:`dkvb_jax.exact.pair_counts.fixed_point`), so every sum and every
decision is exact in integers: the result is the argmax of the full logits, bit for bit, on one
device or with one block of codebooks per device of a codebook mesh.
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
from dkvb_jax.exact.pair_counts import PairClassCounts
from dkvb_jax.parallel.mesh import CODEBOOK
from dkvb_jax.unlearning import _stored_blocks as kernels
from dkvb_jax.unlearning._stored_blocks import DELTA_CHUNK, EXACT_CHUNK, ROW_CHUNK, Caps
from dkvb_jax.unlearning.compaction import compact
from dkvb_jax.unlearning.selection import mask_top_n


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
      top, floor: int32 `[S, Cb, K]` each key's largest value, and its smallest over the
        classes whose value varies within the codebook (the others never change a logit).
      base: int32 `[M, classes]` fixed-point vote sums of the unmasked model.
      rival: int32 `[M]` the runner-up of each row under `base`: the first class other than
        the label with the largest sum.
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
    top: jax.Array
    floor: jax.Array
    base: jax.Array
    rival: jax.Array
    labels: jax.Array
    pairs: jax.Array
    counts: jax.Array
    offsets: jax.Array
    class_span: int = flax.struct.field(pytree_node=False)

    @property
    def num_blocks(self) -> int:
        return self.codes.shape[0]


BLOCK_FIELDS = tuple("codes ranked queries keys values top floor pairs counts offsets".split())


def build(
    stats: PairClassCounts,
    values: jax.Array | None,
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
      values: int32 `[S, Cb, K, classes]`
        (:func:`~dkvb_jax.exact.pair_counts.derive_fixed_point_values`), or None to add them
        later with :func:`with_values` (so the 4 GB table at ImageNet size need not exist
        beside the host copies made here).
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
    if values is not None and values.shape[:2] != (s, stats.block_codebooks):
        raise ValueError(
            f"values must have shape [blocks={s}, codebooks per block="
            f"{stats.block_codebooks}, keys, classes], got {tuple(values.shape)}."
        )

    def blocks(a, axis):
        return np.stack(np.split(np.asarray(a), s, axis=axis))

    span = max(1, int(np.diff(stats.offsets, axis=1).max()))
    # Padded by one class span so a dynamic slice starting at any class never clamps.
    length = max(p.size for p in stats.pairs) + span
    # Host copies made one array at a time and dropped once on the device, so at most one
    # padded copy of any input exists beside the device arrays (GBs at ImageNet size).
    host = dict(
        codes=lambda: blocks(codes.astype(np.int32), 1),
        ranked=lambda: blocks(ranked, 1),
        queries=lambda: blocks(queries, 1),
        keys=lambda: blocks(keys, 0),
        pairs=lambda: np.stack([np.pad(p, (0, length - p.size)) for p in stats.pairs]),
        counts=lambda: np.stack(
            [np.pad(c.astype(stats.counts[0].dtype), (0, length - c.size)) for c in stats.counts]
        ),
        offsets=lambda: stats.offsets.astype(np.int32),
    )
    if mesh is None:
        put = {k: jnp.asarray(make()) for k, make in host.items()}
        labels_d = jnp.asarray(labels, jnp.int32)
    else:
        shard = NamedSharding(mesh, P(CODEBOOK))
        put = {k: jax.device_put(make(), shard) for k, make in host.items()}
        labels_d = jax.device_put(np.asarray(labels, np.int32), NamedSharding(mesh, P()))
    derived = dict.fromkeys(("values", "top", "floor", "base", "rival"))
    store = StoredEval(**put, **derived, labels=labels_d, class_span=span)
    return store if values is None else with_values(store, values, mesh)


def _by_row_chunks(values, codes, mesh, reduce):
    """`reduce(lo, sums)` of the vote sums of rows `[lo, lo + chunk)`, `ROW_CHUNK` rows at a
    time, written into one `[M, ...]` output (the last chunk overlaps the one before and
    rewrites its rows with the same values): the sums are `[chunk, classes]` per device,
    however many rows there are."""
    m, classes = codes.shape[1], values.shape[-1]
    chunk = min(m, ROW_CHUNK)

    def sums(lo):
        def part(v, c, lo):
            return kernels.vote_sums(v, jax.lax.dynamic_slice_in_dim(c, lo, chunk, 0)), ()

        return kernels.over_blocks(mesh, part, (values, codes), (lo,))[0]

    like = jax.eval_shape(reduce, 0, jax.ShapeDtypeStruct((chunk, classes), jnp.int32))
    out = jnp.zeros((m, *like.shape[1:]), like.dtype)

    def step(out, lo):
        return jax.lax.dynamic_update_slice_in_dim(out, reduce(lo, sums(lo)), lo, 0), None

    los = jnp.minimum(jnp.arange(-(-m // chunk)) * chunk, m - chunk).astype(jnp.int32)
    return jax.lax.scan(step, out, los)[0]


@functools.partial(jax.jit, static_argnames=("mesh",))
def vote_sums(values: jax.Array, codes: jax.Array, mesh=None) -> jax.Array:
    """Fixed-point vote sums int32 `[M, classes]` of block values and block codes `[S, M, Cb]`."""
    return _by_row_chunks(values, codes, mesh, lambda lo, sums: sums)


def with_values(store: StoredEval, values: jax.Array, mesh=None) -> StoredEval:
    """The store with other values (e.g. after an exact removal): base sums, runner-ups and
    key bounds recomputed."""
    base = vote_sums(values, store.codes, mesh)
    top, floor = key_bounds(values, mesh)
    return store.replace(
        values=values, top=top, floor=floor, base=base, rival=_rival(base, store.labels)
    )


@functools.partial(jax.jit, static_argnames=("mesh",))
def correct_with_values(store: StoredEval, values: jax.Array, mesh=None) -> jax.Array:
    """bool `[M]` correct predictions of the unmasked model with other `values` (a refit or an
    exact removal): their vote sums only, without the bounds a masked evaluation needs, and
    no `[M, classes]` sums beyond one chunk of rows."""

    def right(lo, sums):
        return sums.argmax(-1) == jax.lax.dynamic_slice_in_dim(store.labels, lo, sums.shape[0])

    return _by_row_chunks(values, store.codes, mesh, right)


@jax.jit
def _rival(base, labels):
    rows = jnp.arange(base.shape[0])
    return base.at[rows, labels].set(jnp.iinfo(jnp.int32).min).argmax(-1).astype(jnp.int32)


def _key_bounds_one(v):
    """One codebook's `[K, classes]` values: each key's largest value and its smallest over the
    classes whose value varies between keys (a constant class never changes a logit)."""
    varies = (v != v[:1]).any(0)
    top = v.max(-1)
    floor = jnp.where(varies, v, jnp.iinfo(jnp.int32).max).min(-1)
    return top, jnp.minimum(floor, top)  # no varying class: a bound of zero


@functools.partial(jax.jit, static_argnames=("mesh",))
def key_bounds(values: jax.Array, mesh=None) -> tuple[jax.Array, jax.Array]:
    """int32 `[S, Cb, K]` twice: :attr:`StoredEval.top` and :attr:`StoredEval.floor`.

    A changed pair `(old -> new key)` moves the logit of every class `j` by
    `values[new, j] - values[old, j] <= max(top[new] - floor[old], 0)`.
    """

    def block(v):  # codebook by codebook: no [Cb, K, classes] temporary
        return jax.lax.map(_key_bounds_one, v)

    if mesh is None:
        return jax.vmap(block)(values)
    spec = P(CODEBOOK)
    return jax.shard_map(jax.vmap(block), mesh=mesh, in_specs=spec, out_specs=(spec, spec))(values)


def class_block_histogram(pairs, counts, offsets, label, span: int, shape: tuple[int, int]):
    """One block's usage histogram of class `label`, int32 `[Cb, K]`, from its entries."""
    lo = offsets[label]
    n = offsets[label + 1] - lo
    p = jax.lax.dynamic_slice(pairs, (lo,), (span,))
    c = jnp.where(jnp.arange(span) < n, jax.lax.dynamic_slice(counts, (lo,), (span,)), 0)
    return jnp.zeros(shape[0] * shape[1], jnp.int32).at[p].add(c).reshape(shape)


def _require(store: StoredEval, *names: str) -> None:
    """Raises a clear error (at trace time) when the store lacks a field the call needs."""
    if missing := [name for name in names if getattr(store, name) is None]:
        raise ValueError(
            f"this StoredEval has no {', '.join(missing)}: build it with values (or add them "
            "with stored_eval.with_values) and keep its statistics (pairs, counts) for UvA."
        )


def uva_selection(store: StoredEval, label, n: int) -> jax.Array:
    """UvA's selection for forgetting class `label`: bool `[S, Cb, K]`, each block's top `n`."""
    _require(store, "pairs", "counts", "offsets")
    shape = store.keys.shape[1:3]

    def one(pairs, counts, offsets):
        hist = class_block_histogram(pairs, counts, offsets, label, store.class_span, shape)
        return mask_top_n(hist, n)

    return jax.vmap(one)(store.pairs, store.counts, store.offsets)


class Sizes(NamedTuple):
    """What one evaluation touched: masked pairs and fallbacks beyond the ranking (all blocks),
    affected rows, rows given full logits and their masked pairs (each a `[classes]` value
    gather), the :class:`Caps` it needed (int32 `[4]`) and a count of overflowed caps (must be
    0)."""

    pairs: jax.Array
    exact: jax.Array
    rows: jax.Array
    undecided: jax.Array
    undecided_pairs: jax.Array
    need: jax.Array
    overflow: jax.Array


class Decided(NamedTuple):
    """What the bounds decide under a selection, for `M` rows: int32 `[M]` the label's exact new
    logit `ly`; bool `[M]` `affected` (a masked pair), `right` (the label beats every other
    class's bound), `wrong` (the runner-up beats the label) and `unmasked` (right without the
    mask); each block's masked pairs (`[S, caps.pairs]` rows, codebooks, stored and new codes,
    live) and int32 `[S, 4]` their sizes (:func:`_stored_blocks.block_pairs`)."""

    ly: jax.Array
    affected: jax.Array
    right: jax.Array
    wrong: jax.Array
    unmasked: jax.Array
    pairs: tuple
    sizes: jax.Array


def decide(store: StoredEval, sel, caps: Caps, mesh=None) -> Decided:
    """The exact decisions of the bounds under selection `sel` `[S, Cb, K]` (traceable)."""
    _require(store, "values", "top", "floor", "base", "rival")
    blocks = (sel, store.codes, store.ranked, store.queries, store.keys)
    blocks += (store.values, store.top, store.floor)
    moves, (pairs, sizes) = kernels.over_blocks(
        mesh, functools.partial(kernels.block_moves, caps=caps), blocks, (store.labels, store.rival)
    )
    m, labels, rival = store.labels.shape[0], store.labels, store.rival
    base_y = store.base[jnp.arange(m), labels]
    base_j = store.base[jnp.arange(m), rival]
    ly, lj = base_y + moves[:, 0], base_j + moves[:, 1]
    # Exact in integers: the label beats every other class's bound, or the runner-up beats the
    # label (ties go to the lower index, as argmax does).
    right = ly > base_j + moves[:, 2]
    wrong = (lj > ly) | ((lj == ly) & (rival < labels))
    unmasked = (base_y > base_j) | ((base_y == base_j) & (rival > labels))
    return Decided(ly, moves[:, 3] > 0, right, wrong, unmasked, pairs, sizes)


def _correct_rows(store, rows, logits):
    return logits.argmax(-1) == store.labels[rows]


def undecided_logits(store: StoredEval, pairs, put, caps: Caps, mesh=None, reduce=_correct_rows):
    """`reduce(store, rows, logits)` of the rows `put` `[caps.rows]` (padded with `M`), from
    their exact logits `[caps.row_chunk, classes]` summed a chunk of rows at a time (their
    masked `pairs` as :func:`decide` gives them), concatenated over the chunks; and int32
    `[S, 2]` each block's masked pairs of those rows and whether they overflowed
    `caps.row_pairs`. By default `reduce` gives bool `[caps.rows]`: the argmax is the label."""
    m = store.labels.shape[0]
    slot = jnp.full(m, caps.rows, jnp.int32).at[put].set(jnp.arange(caps.rows), mode="drop")
    _, (row_pairs, sizes) = kernels.over_blocks(
        mesh, functools.partial(kernels.block_row_pairs, caps=caps), pairs, (slot,)
    )
    chunk = min(caps.rows, caps.row_chunk)
    rows = jnp.where(put < m, put, 0).reshape(-1, chunk)

    def one(args):
        lo, rows_c = args
        delta, _ = kernels.over_blocks(
            mesh,
            lambda *a: (kernels.block_delta(*a, caps=caps), ()),
            (*row_pairs, store.values),
            (lo,),
        )
        return reduce(store, rows_c, store.base[rows_c] + delta)

    los = jnp.arange(0, caps.rows, chunk, dtype=jnp.int32)
    out = jax.lax.map(one, (los, rows))
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out), sizes


def _evaluate(store: StoredEval, sel, caps: Caps, mesh):
    """bool `[M]` correct predictions under selection `sel` `[S, Cb, K]`, and :class:`Sizes`."""
    d = decide(store, sel, caps, mesh)
    put, num_rows = compact(d.affected & ~d.right & ~d.wrong, caps.rows)
    exact_right, row_pairs = undecided_logits(store, d.pairs, put, caps, mesh)
    correct = jnp.where(d.affected, d.right, d.unmasked).at[put].set(exact_right, mode="drop")
    hits, beyond = d.sizes[:, 0], d.sizes[:, 1]
    need = jnp.stack([hits.max(), beyond.max(), num_rows, row_pairs[:, 0].max()])
    overflow = d.sizes[:, 2:].sum() + row_pairs[:, 1].sum() + (num_rows > caps.rows)
    sizes = (hits.sum(), beyond.sum(), d.affected.sum(), num_rows, row_pairs[:, 0].sum())
    return correct, Sizes(*sizes, need, overflow)


def make_caps(pairs: int, exact: int, rows: int, row_pairs: int, row_chunk: int = ROW_CHUNK):
    """:class:`Caps` at least as large as given: powers of two (so few shapes compile), at
    least one fallback chunk."""
    sizes = (pairs, exact, rows, row_pairs, row_chunk)
    return Caps(*(max(EXACT_CHUNK, 1 << (max(int(x), 1) - 1).bit_length()) for x in sizes))


def initial_caps(store: StoredEval) -> Caps:
    """Caps to start from: every pair and row of a small store (one compile), at most 4096."""
    m, cb = store.codes.shape[1:]
    return make_caps(min(m * cb, DELTA_CHUNK), 1, min(m, DELTA_CHUNK), min(m * cb, DELTA_CHUNK))


def grown(caps: Caps, sizes: Sizes) -> Caps:
    """Caps that fit what `sizes` needed (and at least `caps`). After an overflow of the masked
    pairs the undecided rows' needs are undercounted, so retry until `sizes.overflow` is 0."""
    need = np.asarray(sizes.need).reshape(-1, 4).max(0)
    return make_caps(*np.maximum(need, np.asarray(caps[:4])), row_chunk=caps.row_chunk)


@functools.partial(jax.jit, static_argnames=("caps", "mesh"))
def evaluate_selection(store: StoredEval, selection: jax.Array, caps: Caps, mesh=None):
    """Correct predictions of every evaluation row with `selection` masked.

    Args:
      store: the :class:`StoredEval`.
      selection: bool `[S, Cb, K]` pairs to mask (search mode: rows fall back to their nearest
        active key).
      caps: static sizes; the returned sizes must not exceed them.
      mesh: the store's mesh, or None.

    Returns:
      bool `[M]` correct, and the :class:`Sizes` it touched; `sizes.overflow` must be 0, else
      a cap was too small and the result is incomplete (:func:`evaluate` retries).
    """
    return _evaluate(store, selection, caps, mesh)


@functools.partial(jax.jit, static_argnames=("n", "caps", "mesh"))
def evaluate_uva_classes(store: StoredEval, labels: jax.Array, n: int, caps: Caps, mesh=None):
    """UvA forgetting each class of `labels` `[B]` alone, in one call (a loop on the device).

    Returns:
      int32 `[B, 2]` correct rows of the forgotten class and of the others, and the
      :class:`Sizes` of each (leading axis `B`).
    """

    def one(label):
        correct, sizes = _evaluate(store, uva_selection(store, label, n), caps, mesh)
        forget = store.labels == label
        return jnp.stack([(correct & forget).sum(), (correct & ~forget).sum()]), sizes

    return jax.lax.map(one, labels)


def _retrying(fn, caps: Caps, tries: int = 4):
    """`fn(caps)` with caps grown until nothing overflows: `(output, sizes, caps used)`."""
    for _ in range(tries):
        out, sizes = fn(caps)
        if not np.asarray(sizes.overflow).any():
            return out, sizes, caps
        caps = grown(caps, sizes)
    raise RuntimeError(f"evaluation caps still overflow after {tries} tries: {sizes}")


def evaluate(store: StoredEval, selection: jax.Array, caps: Caps | None = None, mesh=None):
    """:func:`evaluate_selection` with caps grown until nothing overflows: bool `[M]` correct
    (NumPy), the :class:`Sizes`, and the caps used (for the next call: one compile)."""
    fn = functools.partial(evaluate_selection, store, selection, mesh=mesh)
    correct, sizes, caps = _retrying(lambda c: fn(caps=c), caps or initial_caps(store))
    return np.asarray(correct), sizes, caps


def evaluate_every_class(store, classes, n: int, *, caps=None, mesh=None, batch: int = 8):
    """UvA forgetting each of `classes` alone, `batch` classes per call (one compile).

    Returns:
      int `[len(classes), 2]` correct rows of the forgotten class and of the others; int
      `[len(classes), 5]` masked pairs, fallbacks beyond the ranking, affected and undecided
      rows, and the undecided rows' masked pairs; and the caps used at the end (grown when a
      batch overflowed them).
    """
    classes = [int(c) for c in classes]
    counts, sizes = [], []
    caps = caps or initial_caps(store)
    for i in progress_bar(range(0, len(classes), batch), desc="every class: evaluate"):
        chunk = classes[i : i + batch]
        padded = jnp.asarray(chunk + chunk[-1:] * (batch - len(chunk)), jnp.int32)
        fn = functools.partial(evaluate_uva_classes, store, padded, n, mesh=mesh)
        got, sz, caps = _retrying(lambda c, fn=fn: fn(caps=c), caps)
        counts.append(np.asarray(got)[: len(chunk)])
        cols = (sz.pairs, sz.exact, sz.rows, sz.undecided, sz.undecided_pairs)
        sizes.append(np.stack([np.asarray(a) for a in cols], -1)[: len(chunk)])
    return np.concatenate(counts), np.concatenate(sizes), caps


def base_correct(store: StoredEval) -> jax.Array:
    """bool `[M]` correct predictions of the unmasked model."""
    return store.base.argmax(-1) == store.labels
