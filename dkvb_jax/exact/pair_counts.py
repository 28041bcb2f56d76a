"""Sparse per-(class, pair) label counts: UvA's histogram and the exact counts in one object.

UvA's per-class usage histogram `[classes, codebooks, keys]` and the exact estimator's label
counts `[codebooks, keys, classes]` are the same numbers: how many examples of class `y`
retrieved pair `(codebook, key)`. At ImageNet size either dense table is 4.2 GB of int32 and
almost all of it is zero: a class of 1,300 examples touches at most 1,300 of 4,096 keys per
codebook. :class:`PairClassCounts` stores only the non-zero cells, class by class (a CSR over
classes), with counts in the smallest unsigned type that holds them, split into blocks of
codebooks so that each block can live on its own device of a codebook mesh.

- :meth:`PairClassCounts.class_block` gives one class's dense histogram over a block of
  codebooks (UvA: forgetting a class is a top-N over it, no data pass);
- :meth:`PairClassCounts.dense_block` gives the int32 counts `[block codebooks, keys, classes]`
  that :func:`dkvb_jax.exact.derive_values` turns into values;
- :meth:`PairClassCounts.remove` subtracts examples exactly (integer counts), giving the same
  object, bit for bit, as counting the remaining examples from scratch;
- :func:`derive_fixed_point_values` turns them into the vote's fixed-point values, a few
  codebooks at a time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dkvb_jax._progress import progress_bar
from dkvb_jax.errors import InputError
from dkvb_jax.exact.estimators import EstimatorConfig, derive_values
from dkvb_jax.parallel.mesh import CODEBOOK

_UINT16_MAX = np.iinfo(np.uint16).max

# Fixed-point resolution of the vote: values are multiples of 2**-16, clipped at -64 (a log
# probability of e**-64; the absent-class value -1e4 stays the lowest), so a sum over 256
# codebooks stays within int32.
SCALE_BITS = 16
VALUE_FLOOR = -64.0


@dataclasses.dataclass(frozen=True, eq=False)
class PairClassCounts:
    """Non-zero label counts per class and pair, in blocks of codebooks.

    Attributes:
      pairs: per block, int32 `[nnz_b]` local pair index `(codebook - block start) * keys + key`,
        sorted by class, then pair.
      counts: per block, `[nnz_b]` counts (uint16 when every count fits, else int32).
      offsets: int64 `[blocks, classes + 1]`; block `b`'s entries of class `y` are
        `offsets[b, y]:offsets[b, y + 1]`.
      num_codebooks: Codebooks C (blocks split them evenly).
      num_keys: Keys per codebook K.
      num_classes: Classes.
    """

    pairs: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    offsets: np.ndarray
    num_codebooks: int
    num_keys: int
    num_classes: int

    @property
    def num_blocks(self) -> int:
        return len(self.pairs)

    @property
    def block_codebooks(self) -> int:
        """Codebooks per block."""
        return self.num_codebooks // self.num_blocks

    @property
    def nnz(self) -> int:
        """Stored (non-zero) cells."""
        return int(sum(p.size for p in self.pairs))

    @property
    def nbytes(self) -> int:
        entries = sum(p.nbytes + c.nbytes for p, c in zip(self.pairs, self.counts, strict=True))
        return int(entries + self.offsets.nbytes)

    @property
    def density(self) -> float:
        """Fraction of the `[classes, codebooks, keys]` cells that are non-zero."""
        return self.nnz / (self.num_classes * self.num_codebooks * self.num_keys)

    def class_block(self, label: int, block: int) -> np.ndarray:
        """Class `label`'s usage histogram over codebook block `block`: int32 `[block C, K]`."""
        self._check_label(label)
        lo, hi = self.offsets[block, label], self.offsets[block, label + 1]
        out = np.zeros(self.block_codebooks * self.num_keys, np.int32)
        out[self.pairs[block][lo:hi]] = self.counts[block][lo:hi]
        return out.reshape(self.block_codebooks, self.num_keys)

    def class_histogram(self, label: int) -> np.ndarray:
        """Class `label`'s usage histogram, int32 `[codebooks, keys]`."""
        return np.concatenate([self.class_block(label, b) for b in range(self.num_blocks)])

    def _class_entries(self, block: int):
        """Per class of block `block`: its sorted pairs and their counts (views)."""
        off = self.offsets[block]
        pairs, counts = self.pairs[block], self.counts[block]
        for y in range(self.num_classes):
            yield pairs[off[y] : off[y + 1]], counts[off[y] : off[y + 1]]

    def dense_block(self, block: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Exact counts of codebooks `[start, stop)` of block `block` (default all), int32
        `[stop - start, keys, classes]`: the layout :func:`dkvb_jax.exact.derive_values` takes."""
        stop = self.block_codebooks if stop is None else stop
        if not 0 <= start < stop <= self.block_codebooks:
            raise InputError(
                f"dense_block needs 0 <= start < stop <= {self.block_codebooks}, got "
                f"[{start}, {stop})."
            )
        lo, hi = start * self.num_keys, stop * self.num_keys
        out = np.zeros((hi - lo, self.num_classes), np.int32)
        # Class by class: each class's pairs are sorted, so its cells in [lo, hi) are one
        # slice; no temporary the size of all entries (GBs at ImageNet size).
        for y, (seg, cnt) in enumerate(self._class_entries(block)):
            i, j = np.searchsorted(seg, (lo, hi))
            out[seg[i:j] - lo, y] = cnt[i:j]
        return out.reshape(stop - start, self.num_keys, self.num_classes)

    def class_totals(self) -> np.ndarray:
        """Examples counted per class, int64 `[classes]` (each counted once per codebook)."""
        sizes = np.diff(self.offsets[0])
        cls = np.repeat(np.arange(self.num_classes), sizes)
        per_block = np.bincount(cls, weights=self.counts[0], minlength=self.num_classes)
        return np.rint(per_block / self.block_codebooks).astype(np.int64)

    def remove(self, codes: np.ndarray, labels: np.ndarray) -> PairClassCounts:
        """Counts with the given examples subtracted (exact; raises if one was never counted).

        Args:
          codes: int `[n, codebooks]` or `[n, codebooks, top_k]` codes of the examples to
            remove (-1 entries count nothing), as they were counted.
          labels: int `[n]`.
        """
        removed = count_pairs(
            codes,
            labels,
            num_keys=self.num_keys,
            num_classes=self.num_classes,
            num_blocks=self.num_blocks,
        )
        return _subtract(self, removed)

    def _check_label(self, label) -> None:
        if (
            isinstance(label, bool)
            or not isinstance(label, (int, np.integer))
            or not (0 <= label < self.num_classes)
        ):
            raise InputError(f"label must be an int in [0, {self.num_classes}), got {label!r}.")

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the counts, independent of the block layout."""
        import hashlib

        h = hashlib.sha256(f"{self.num_codebooks},{self.num_keys},{self.num_classes}".encode())
        cells = self.block_codebooks * self.num_keys
        for y in range(self.num_classes):
            # Blocks in codebook order, each sorted by pair: the concatenation is sorted too.
            spans = [
                slice(self.offsets[b, y], self.offsets[b, y + 1]) for b in range(self.num_blocks)
            ]
            for b, sl in enumerate(spans):
                h.update((self.pairs[b][sl].astype(np.int64) + b * cells).tobytes())
            for b, sl in enumerate(spans):
                h.update(self.counts[b][sl].astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def equals(self, other: PairClassCounts) -> bool:
        """True when both hold the same counts in the same layout (bit for bit)."""
        return (
            (self.num_codebooks, self.num_keys, self.num_classes)
            == (other.num_codebooks, other.num_keys, other.num_classes)
            and np.array_equal(self.offsets, other.offsets)
            and all(np.array_equal(a, b) for a, b in zip(self.pairs, other.pairs, strict=True))
            and all(
                np.array_equal(a.astype(np.int64), b.astype(np.int64))
                for a, b in zip(self.counts, other.counts, strict=True)
            )
        )

    def equals_recount(
        self, codes: np.ndarray, labels: np.ndarray, *, where: np.ndarray | None = None
    ) -> bool:
        """Whether these counts equal :func:`count_pairs` of the given rows in this layout, bit
        for bit, compared one class and block at a time as the recount goes: no second set of
        statistics (GBs at ImageNet size) and no copy of the rows' codes is made.

        Args:
          codes: int `[n, codebooks]` or `[n, codebooks, top_k]`, as for :func:`count_pairs`.
          labels: int `[n]`.
          where: optional bool `[n]`: recount only these rows.
        """
        codes, width = _check_counted(
            codes, labels, self.num_keys, self.num_classes, self.num_blocks, where
        )
        if codes.shape[1] != self.num_codebooks:
            return False
        for y, b, nz, cnt in _histograms(
            codes, labels, self.num_keys, self.num_classes, width, where
        ):
            lo, hi = self.offsets[b, y], self.offsets[b, y + 1]
            if not (
                np.array_equal(self.pairs[b][lo:hi], nz)
                and np.array_equal(self.counts[b][lo:hi].astype(np.int64), cnt.astype(np.int64))
            ):
                return False
        return True


def _codes_2d(codes: np.ndarray, num_keys: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim == 3:
        codes = codes.reshape(codes.shape[0], -1) if codes.shape[2] == 1 else codes
    if codes.ndim not in (2, 3) or not np.issubdtype(codes.dtype, np.integer):
        raise InputError(
            f"codes must be integer [n, codebooks] or [n, codebooks, top_k], got {codes.dtype} "
            f"{codes.shape}."
        )
    if codes.size and codes.max() >= num_keys:
        raise InputError(f"codes must lie in [-1, num_keys={num_keys}), got max {codes.max()}.")
    return codes


def count_pairs(
    codes: np.ndarray,
    labels: np.ndarray,
    *,
    num_keys: int,
    num_classes: int,
    num_blocks: int = 1,
    where: np.ndarray | None = None,
) -> PairClassCounts:
    """Counts examples per class and pair from their codes.

    Args:
      codes: int `[n, codebooks]` (top-1) or `[n, codebooks, top_k]`, e.g. int16 as stored;
        -1 entries count nothing.
      labels: int `[n]` in `[0, num_classes)`.
      num_keys: Keys per codebook.
      num_classes: Classes.
      num_blocks: Blocks of codebooks (must divide the codebooks), e.g. one per device.
      where: optional bool `[n]`: count only these rows (no copy of their codes is made).

    Returns:
      The :class:`PairClassCounts`; the same whatever the order of the examples.
    """
    codes, width = _check_counted(codes, labels, num_keys, num_classes, num_blocks, where)
    pairs, counts = [[] for _ in range(num_blocks)], [[] for _ in range(num_blocks)]
    offsets = np.zeros((num_blocks, num_classes + 1), np.int64)
    for y, b, nz, cnt in _histograms(codes, labels, num_keys, num_classes, width, where):
        pairs[b].append(nz)
        counts[b].append(cnt)
        offsets[b, y + 1] = offsets[b, y] + nz.size
    return PairClassCounts(
        pairs=tuple(_concatenate(p) for p in pairs),
        counts=tuple(_concatenate(c) for c in counts),
        offsets=offsets,
        num_codebooks=codes.shape[1],
        num_keys=num_keys,
        num_classes=num_classes,
    )


def _check_counted(codes, labels, num_keys, num_classes, num_blocks, where):
    """Validated `(codes, codebooks per block)` for :func:`count_pairs`; raises
    :class:`InputError` naming what is wrong."""
    codes = _codes_2d(codes, num_keys)
    labels = np.asarray(labels)
    n, num_codebooks = codes.shape[:2]
    if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= num_classes)):
        raise InputError(
            f"labels must be int [n={n}] in [0, {num_classes}), got shape {labels.shape}"
            + (f" and range [{labels.min()}, {labels.max()}]." if labels.size else ".")
        )
    if (
        isinstance(num_blocks, bool)
        or not isinstance(num_blocks, int)
        or num_blocks < 1
        or (num_codebooks % num_blocks)
    ):
        raise InputError(
            f"num_blocks must be a positive int dividing num_codebooks={num_codebooks}, got "
            f"{num_blocks!r}."
        )
    if where is not None and (np.shape(where) != (n,) or np.asarray(where).dtype != bool):
        raise InputError(
            f"where must be bool [n={n}] (the rows to count), got "
            f"{np.asarray(where).dtype} {np.shape(where)}."
        )
    return codes, num_codebooks // num_blocks


def _histograms(codes, labels, num_keys, num_classes, width, where):
    """Per class `y`, then block `b`: `(y, b, pairs, counts)`, the non-zero local pairs
    (int32, sorted) of the class's rows (those in `where`) and their compact counts."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    if where is not None:
        order = order[np.asarray(where)[order]]
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    cells = width * num_keys
    starts = np.arange(width, dtype=np.int64) * num_keys
    for y in range(num_classes):
        rows = codes[order[bounds[y] : bounds[y + 1]]]
        for b in range(codes.shape[1] // width):
            block = rows[:, b * width : (b + 1) * width]
            local = starts.reshape((1, width) + (1,) * (block.ndim - 2)) + block
            hist = np.bincount(local[block >= 0], minlength=cells)
            nz = np.flatnonzero(hist)
            yield y, b, nz.astype(np.int32), _compact(hist[nz])


def _compact(counts: np.ndarray) -> np.ndarray:
    """The smallest unsigned dtype that holds `counts` exactly (uint16, else int32)."""
    if counts.size == 0 or counts.max() <= _UINT16_MAX:
        return counts.astype(np.uint16)
    return counts.astype(np.int32)


def _concatenate(pieces: list[np.ndarray]) -> np.ndarray:
    """One array of per-class pieces (emptied as it goes), in the widest of their dtypes: at
    most one copy of the entries beside the pieces, never an int64 copy of all of them."""
    dtype = np.result_type(*{p.dtype for p in pieces}) if pieces else np.uint16
    out = np.empty(sum(p.size for p in pieces), dtype)
    at = 0
    for i, p in enumerate(pieces):
        out[at : at + p.size] = p
        at += p.size
        pieces[i] = None  # the piece goes as soon as it is copied
    pieces.clear()
    return out


def _subtract(stats: PairClassCounts, removed: PairClassCounts) -> PairClassCounts:
    """`stats - removed`, cell by cell; cells that reach zero are dropped. Class by class, so
    the temporaries are one class's entries (the result is the only full-size allocation)."""

    def shape(s: PairClassCounts) -> tuple[int, ...]:
        return (s.num_codebooks, s.num_keys, s.num_classes, s.num_blocks)

    if shape(removed) != shape(stats):
        raise InputError("the removed examples' codes do not match these statistics' shape.")
    pairs, counts = [], []
    offsets = np.zeros_like(stats.offsets)
    for b in range(stats.num_blocks):
        kept_pairs, kept_counts = [], []
        gone = removed._class_entries(b)
        for y, (seg, cnt) in enumerate(stats._class_entries(b)):
            rseg, rcnt = next(gone)
            if rseg.size:
                pos = np.searchsorted(seg, rseg)
                found = (pos < seg.size) & (seg[np.minimum(pos, seg.size - 1)] == rseg)
                new = cnt.astype(np.int64)
                if not found.all() or np.any(new[pos] < rcnt):
                    raise InputError(
                        "cannot remove examples that were never counted: some (class, pair) "
                        "cells would go negative. Pass the codes and labels of examples counted "
                        "in these statistics."
                    )
                new[pos] -= rcnt
                keep = new > 0
                seg, cnt = seg[keep], new[keep]
            kept_pairs.append(seg)
            # int32 pieces narrow when they fit: the block is uint16 if every class's is.
            kept_counts.append(cnt if cnt.dtype == np.uint16 else _compact(cnt))
            offsets[b, y + 1] = offsets[b, y] + seg.size
        pairs.append(_concatenate(kept_pairs))
        counts.append(_concatenate(kept_counts))
    return dataclasses.replace(stats, pairs=tuple(pairs), counts=tuple(counts), offsets=offsets)


def fixed_point(values: np.ndarray | jax.Array) -> jax.Array:
    """Values as int32 multiples of `2**-SCALE_BITS`, floored at `VALUE_FLOOR`."""
    v = jnp.maximum(jnp.asarray(values, jnp.float32), VALUE_FLOOR)
    return jnp.round(v * 2.0**SCALE_BITS).astype(jnp.int32)


# Codebooks whose values are derived at once: float32 [8, 4096, 1000] intermediates, 131 MB.
_DERIVE_CODEBOOKS = 8


def derive_fixed_point_values(
    stats: PairClassCounts,
    config: EstimatorConfig | None = None,
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
    config = EstimatorConfig() if config is None else config
    if config.codebook_weighting != "none":
        raise ValueError(
            "derive_fixed_point_values derives a few codebooks at a time, so it cannot normalise "
            "codebook weights over all codebooks; use EstimatorConfig(codebook_weighting='none')."
        )
    s, cb, k, y = stats.num_blocks, stats.block_codebooks, stats.num_keys, stats.num_classes
    zeros, put = _value_writers(config)
    step = max(d for d in range(1, min(_DERIVE_CODEBOOKS, cb) + 1) if cb % d == 0)
    shape = (s, cb, k, y)
    sharding = None if mesh is None else NamedSharding(mesh, P(CODEBOOK))
    # Each device derives only the blocks it holds, into its own buffer: a jit over the
    # sharded table would send every write's counts to all devices and derive them on each
    # (at ImageNet size on 8 devices: 4x the time, and a GB of replicated temporaries).
    if sharding is None:
        spans = {(0, s): [None]}
    else:
        spans = {}
        for dev, idx in sharding.addressable_devices_indices_map(shape).items():
            spans.setdefault(idx[0].indices(s)[:2], []).append(dev)
    jobs = [(span, b, c) for span in spans for b in range(*span) for c in range(0, cb, step)]
    bufs = {span: zeros((span[1] - span[0], cb, k, y), devs[0]) for span, devs in spans.items()}
    last = None
    for span, b, c in progress_bar(jobs, desc="values from counts", disable=not progress):
        counts = jax.device_put(stats.dense_block(b, c, c + step), spans[span][0])
        # One write in flight: writes to different devices would otherwise run at once, each
        # with its own float32 temporaries. Waiting for the previous write only after the next
        # block's counts are made keeps the host's work beside the device's.
        if last is not None:
            last.block_until_ready()
        bufs[span] = last = put(bufs[span], b - span[0], c, counts)
    if sharding is None:
        return bufs[(0, s)]
    # Replicas (a 'data' axis) get copies of the derived blocks.
    held = {dev: jax.device_put(bufs[span], dev) for span, devs in spans.items() for dev in devs}
    return jax.make_array_from_single_device_arrays(
        shape, sharding, [held[d] for d in sharding.addressable_devices]
    )


@functools.lru_cache(maxsize=16)
def _value_writers(config: EstimatorConfig):
    """Jitted buffer allocation and in-place block writes, made once per config so that every
    derivation after the first (removals, oracles) reuses the compiled code."""

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def zeros(shape, device):
        return jax.device_put(jnp.zeros(shape, jnp.int32), device)

    # Block and start are traced: one compile for every write. The write runs on the device
    # that holds the buffer.
    @functools.partial(jax.jit, donate_argnums=0)
    def put(buf, block, start, counts):
        vals = fixed_point(derive_values(counts, config))
        return jax.lax.dynamic_update_slice(buf, vals[None], (block, start, 0, 0))

    return zeros, put
