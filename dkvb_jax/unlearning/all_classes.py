"""Every class's forgetting evaluated at once, a few evaluation rows at a time.

Forgetting class `y` with UvA moves a row's stored code `k_0` in codebook `c` to the first key of
its stored ranking `k_0, k_1, ...` that `y` does not mask, after `d[c, y]` masked ones (or, past
the ranking, to the nearest key `y` leaves). The per-class evaluation
(:func:`stored_eval.evaluate_every_class`) works class after class. Here one row's logits under
every class's mask are bounded at once, and only the (row, class) cases the bounds leave
undecided get their full logits:

- every class's first fallbacks (`d >= 1`) change the row's logits by one product per row,
  `[Y, C] @ [C, classes]` of the 0/1 hits and `values[c, k_1] - values[c, k_0]`, in float32 on
  the differences shifted right by `shift` bits, so that a sum over all `C` codebooks stays
  within 2^24 and is exact: the true change lies in `[P << shift, (P << shift) + hits *
  (2^shift - 1)]`. A second product bounds each class's gain past the first fallback (its
  largest value over `k_2 .. k_{D-1}` less that at `k_1`, rounded up);
- the label's and the runner-up's moves are exact within the ranking (telescoped level by
  level) and bounded beyond it by the class's extremes over the codebook's keys;
- a (row, class) whose label beats every other class's upper bound is right, one whose
  runner-up's lower bound beats the label's upper bound is wrong; the rest get their full
  logits from their masked pairs (as :mod:`stored_eval` sums them).

Every decision is exact in integers, so the counts equal the per-class evaluation's bit for bit,
on one device or with one block of codebooks per device of a codebook mesh.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dkvb_jax._progress import progress_bar
from dkvb_jax.parallel.mesh import CODEBOOK
from dkvb_jax.unlearning import _stored_blocks as kernels
from dkvb_jax.unlearning.compaction import compact
from dkvb_jax.unlearning.stored_eval import StoredEval, _require, uva_selection

# (row, class) cases left undecided whose exact logits are summed at once: [512, classes].
SLOT_CHUNK = 512
_F32_EXACT = 1 << 24  # every integer of at most this magnitude is a float32
_INT_MIN = jnp.iinfo(jnp.int32).min


class AllClassSizes(NamedTuple):
    """What :func:`evaluate_all_classes` touched, per evaluated class, int `[Y]` each: masked
    (row, codebook) pairs, pairs past the first fallback (beyond the stored ranking included),
    fallbacks beyond the stored ranking,
    affected rows (a masked pair), and rows left undecided by the bounds (each summed from its
    masked pairs)."""

    pairs: np.ndarray
    deeper: np.ndarray
    beyond: np.ndarray
    rows: np.ndarray
    undecided: np.ndarray


def class_masks(store: StoredEval, classes, n: int) -> jax.Array:
    """UvA's selection for forgetting each of `classes` alone, bit-packed: uint32
    `[S, Cb, K, ceil(Y / 32)]`, bit `y % 32` of word `y // 32` set where class `classes[y]`
    masks the key (a GB as bools at ImageNet size, 128 MB packed)."""
    classes = np.asarray(classes, np.int32)
    words = -(-classes.size // 32)
    padded = np.full(words * 32, -1, np.int32)
    padded[: classes.size] = classes
    return _pack(store, jnp.asarray(padded.reshape(words, 32)), n)


@functools.partial(jax.jit, static_argnums=2)
def _pack(store, groups, n):
    shifts = jnp.arange(32, dtype=jnp.uint32)

    def word(group):  # [32] classes (-1: none) -> [S, Cb, K] uint32
        def bit(acc, args):
            label, shift = args
            sel = uva_selection(store, jnp.maximum(label, 0), n) & (label >= 0)
            return acc | (sel.astype(jnp.uint32) << shift), None

        zeros = jnp.zeros(store.keys.shape[:3], jnp.uint32)
        return jax.lax.scan(bit, zeros, (group, shifts))[0]

    return jnp.moveaxis(jax.lax.map(word, groups), 0, -1)


def value_shift(values: jax.Array, codebooks: int) -> int:
    """Smallest right shift of value differences whose sum over `codebooks` codebooks is exact
    in float32 (every partial sum an integer of magnitude at most 2^24)."""
    span = int(values.max()) - int(values.min())
    shift = 0
    while codebooks * -(-span // (1 << shift)) > _F32_EXACT:
        shift += 1
    return shift


def _unpack(words, num):
    """bool `[..., num]` from uint32 `[..., ceil(num / 32)]`."""
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :num].astype(bool)


def _exact_dot(hits, vecs):
    """int32 `[B, Y, V]`: `sum_c hits[b, c, y] * vecs[b, c, v]` of bool hits and int32 vecs,
    exact: float32 products of digits of `vecs` narrow enough that a digit's sum over the `Cb`
    codebooks stays within 2^24 (fast matmuls, where an int32 dot is a slow loop on XLA:CPU),
    recombined with int32 wrap-around, like the sum they equal."""
    width = 24 - max(hits.shape[1] - 1, 1).bit_length()  # 16 bits for 256 codebooks
    digits, rest = [], vecs
    for _ in range(-(-32 // width) - 1):
        low = rest & ((1 << width) - 1)
        digits.append(low)
        rest = (rest - low) >> width  # floor division
    digits.append(rest)  # signed, within width bits
    stacked = jnp.concatenate(digits, -1).astype(jnp.float32)
    out = jnp.einsum(
        "bcy,bcv->byv", hits.astype(jnp.float32), stacked, precision=jax.lax.Precision.HIGHEST
    ).astype(jnp.int32)
    v = vecs.shape[-1]
    return sum(out[..., i * v : (i + 1) * v] << (i * width) for i in range(len(digits)))


# The per-(row, class) sums of _block_bounds beside its products' operands: masked pairs; the
# label's and the runner-up's exact first-fallback moves; their moves past it, at least / at
# most (exact within the ranking); any class's gain beyond the ranking, at most; pairs past the
# first fallback, and beyond the ranking.
COLUMNS = "hits label1 rival1 label_lo label_hi rival_lo others_hi deeper beyond".split()
HITS, LABEL1, RIVAL1, LABEL_LO, LABEL_HI, RIVAL_LO, OTHERS_HI, DEEPER, BEYOND = range(9)


def _shifted_product(hits, shifted):
    """int32 `[B, Y, classes]`: `sum_{s, c} hits[s, b, c, y] * shifted[s, b, c, j]` over every
    block's codebooks, exact in float32 (shifted values whose sum over all codebooks stays
    within 2^24, :func:`value_shift`)."""
    return jnp.einsum(
        "sbcy,sbcj->byj",
        hits.astype(jnp.float32),
        shifted.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    ).astype(jnp.int32)


def _products(h1, first, h2, gain, mesh):
    """The shifted products of every block's operands (leading block axis `S`): int32
    `[B, Y, classes]`, the first fallbacks' changes plus each class's gain past them.

    On a mesh the operands (`[S, B, Cb, Y]` hits, `[S, B, Cb, classes]` shifted values, a few
    MB) are gathered and each device takes the product for its slice of the `Y` classes over
    all codebooks: no device holds a whole `[B, Y, classes]` part sum, and what follows is
    computed once per slice, not on every device."""

    def local(h1, first, h2, gain):
        return _shifted_product(h1, first) + _shifted_product(h2, gain)

    if mesh is None:
        return local(h1, first, h2, gain)
    y, devices = h1.shape[-1], mesh.shape[CODEBOOK]
    pad = lambda h: jnp.pad(h, [(0, 0)] * 3 + [(0, -y % devices)])  # noqa: E731
    by_class, whole = P(None, None, None, CODEBOOK), P()
    out = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(by_class, whole, by_class, whole),
        out_specs=P(None, CODEBOOK),
    )(pad(h1), first, pad(h2), gain)
    return out[:, :y]


def _block_bounds(
    ranked, values, top, floor, cmin, cmax, bits, lo, labels, rival, *, rows, shift, y
):
    """One block's part of the bounds for rows `[lo, lo + rows)` under each of `Y` masks: int32
    `[rows, Y, 9]`, the :data:`COLUMNS`, and the operands of the shifted products
    (:func:`_products`): the first fallbacks' hits `[rows, Cb, Y]` and changes, rounded down,
    and the hits past them and each class's largest gain there, rounded up
    (`[rows, Cb, classes]`)."""
    k = jax.lax.dynamic_slice_in_dim(ranked, lo, rows, 0).astype(jnp.int32)  # [B, Cb, D]
    depth, c = k.shape[-1], jnp.arange(k.shape[1])[None, :]
    # Bit y of run[b, c, l] is set where class y masks k_0 .. k_l: a running AND along the
    # ranking of the packed masks, so d >= l + 1 there.
    run = jax.lax.associative_scan(jnp.bitwise_and, bits[c[..., None], k], axis=2)
    h1, hb = _unpack(run[:, :, 0], y), _unpack(run[:, :, depth - 1], y)  # d >= 1, d == D
    # Within the ranking, each level l = 2 .. D-1 a pair reaches: [B, Cb * (D - 2), Y].
    levels = [_unpack(run[:, :, lvl - 1], y) & ~hb for lvl in range(2, depth)]
    v = [values[c, k[..., lvl]] for lvl in range(depth)]  # [B, Cb, classes] each
    # Past the first fallback (within the ranking) a class gains at most its largest value
    # over k_2 .. k_{D-1} less that at k_1.
    gain = functools.reduce(jnp.maximum, v[2:]) - v[1]
    operands = (h1, (v[1] - v[0]) >> shift, levels[0], -(-gain >> shift))

    lab, riv = (jax.lax.dynamic_slice_in_dim(a, lo, rows)[:, None] for a in (labels, rival))
    lv, rv = values[c[..., None], k, lab[..., None]], values[c[..., None], k, riv[..., None]]
    ones = jnp.ones_like(lv[..., 0])
    first = jnp.stack([ones, lv[..., 1] - lv[..., 0], rv[..., 1] - rv[..., 0]], -1)
    # The label's and runner-up's moves past the first fallback, telescoped over the levels,
    # are exact within the ranking (the others' gain is in the product) ...
    step_l, step_r = lv[..., 2:] - lv[..., 1:-1], rv[..., 2:] - rv[..., 1:-1]  # [B, Cb, D - 2]
    count = jnp.zeros_like(step_l).at[..., 0].set(1)
    none = jnp.zeros_like(step_l)
    deeper = jnp.stack([step_l, step_l, step_r, none, count, none], -1)
    deeper = jnp.swapaxes(deeper, 1, 2).reshape(rows, -1, deeper.shape[-1])
    # ... and bounded beyond it, where the new key may be any key.
    beyond = jnp.stack(
        [
            cmin[c, lab] - lv[..., 1],
            cmax[c, lab] - lv[..., 1],
            cmin[c, riv] - rv[..., 1],
            jnp.maximum(top.max(-1)[None] - floor[c, k[..., 1]], 0),
            ones,
            ones,
        ],
        -1,
    )
    small = _exact_dot(jnp.concatenate(levels, 1), deeper) + _exact_dot(hb, beyond)
    return jnp.concatenate([_exact_dot(h1, first), small], -1), operands


def _block_exact(codes, ranked, queries, keys, values, bits, lo, slot_rows, slot_classes, live):
    """One block's change of the vote sums of (row, class) slots, int32 `[U, classes]`: each
    slot's masked pairs, from its stored ranking or an exact search past it."""
    r = lo + slot_rows
    k = ranked[r].astype(jnp.int32)  # [U, Cb, D]
    u, cb, depth = k.shape
    c = jnp.arange(cb)[None, :, None]
    word, shift = (slot_classes // 32)[:, None, None], (slot_classes % 32).astype(jnp.uint32)
    masked = (bits[c, k, word] >> shift[:, None, None]) & 1
    d = jnp.cumprod(masked.astype(jnp.int32), -1).sum(-1)  # [U, Cb]
    new = jnp.take_along_axis(k, jnp.minimum(d, depth - 1)[..., None], -1)[..., 0]
    flat = lambda a: a.reshape(-1)  # noqa: E731

    # Beyond the ranking: the nearest key the slot's class leaves, a chunk at a time.
    far, num_far = compact(flat((d == depth) & live[:, None]), u * cb)

    def search(carry):
        i, new = carry
        idx = jax.lax.dynamic_slice_in_dim(far, i, kernels.EXACT_CHUNK)
        s, b = jnp.minimum(idx // cb, u - 1), idx % cb
        w, sh = slot_classes[s] // 32, (slot_classes[s] % 32).astype(jnp.uint32)
        sel = ((bits[b, :, w] >> sh[:, None]) & 1).astype(bool)  # [chunk, K]
        got = kernels.exact_nearest(queries[r[s], b], keys[b], sel)
        return i + kernels.EXACT_CHUNK, flat(new).at[idx].set(got, mode="drop").reshape(u, cb)

    far = jnp.pad(far, (0, kernels.EXACT_CHUNK), constant_values=u * cb)
    new = jax.lax.while_loop(lambda c: c[0] < num_far, search, (0, new))[1]

    pairs, num = compact(flat((d >= 1) & live[:, None]), u * cb)
    pairs = jnp.pad(pairs, (0, kernels.DELTA_CHUNK), constant_values=u * cb)
    old, new = flat(codes[r]), flat(new)

    def add(carry):
        i, delta = carry
        idx = jax.lax.dynamic_slice_in_dim(pairs, i, kernels.DELTA_CHUNK)
        at = jnp.minimum(idx, u * cb - 1)
        s, b = jnp.where(idx < u * cb, idx // cb, u), at % cb
        step = values[b, new[at]] - values[b, old[at]]
        return i + kernels.DELTA_CHUNK, delta.at[s].add(step, mode="drop")

    zeros = jnp.zeros((u, values.shape[-1]), jnp.int32) + 0 * values[0, 0, 0]
    return jax.lax.while_loop(lambda c: c[0] < num, add, (0, zeros))[1], ()


@functools.partial(jax.jit, static_argnames=("mesh",))
def _extremes(values, mesh=None):
    """int32 `[S, Cb, classes]` each class's smallest and largest value over a codebook's keys."""

    def block(v):
        return jax.lax.map(lambda vc: (vc.min(0), vc.max(0)), v)

    if mesh is None:
        return jax.vmap(block)(values)
    spec = P(CODEBOOK)
    return jax.shard_map(jax.vmap(block), mesh=mesh, in_specs=spec, out_specs=(spec, spec))(values)


def _step(store, cmin, cmax, bits, classes, carry, i, *, rows, shift, mesh):
    """Rows `[lo, lo + rows)` (the last step overlaps the one before and counts only its new
    rows): adds their correct (row, class) cases to `carry`'s counts and sizes."""
    counts, sizes = carry
    m, y = store.labels.shape[0], classes.shape[0]
    lo = jnp.minimum(i * rows, m - rows)
    blocks = (store.ranked, store.values, store.top, store.floor, cmin, cmax, bits)
    bounds = functools.partial(_block_bounds, rows=rows, shift=shift, y=y)
    small, operands = kernels.over_blocks(mesh, bounds, blocks, (lo, store.labels, store.rival))
    prod = _products(*operands, mesh)
    r = lo + jnp.arange(rows)
    base, lab, riv = store.base[r], store.labels[r], store.rival[r]
    base_l, base_r = base[jnp.arange(rows), lab][:, None], base[jnp.arange(rows), riv][:, None]
    others = base[:, None, :] + (prod << shift)
    others = others.at[jnp.arange(rows), :, lab].set(_INT_MIN).max(-1)  # [B, Y]
    # The shifted-off low bits add at most 2^shift - 1 per hit, and never take anything away.
    others_hi = others + small[..., HITS] * ((1 << shift) - 1) + small[..., OTHERS_HI]
    label_lo = base_l + small[..., LABEL1] + small[..., LABEL_LO]
    label_hi = base_l + small[..., LABEL1] + small[..., LABEL_HI]
    rival_lo = base_r + small[..., RIVAL1] + small[..., RIVAL_LO]
    # A row no pair of which the class masks keeps its unmasked prediction.
    affected = small[..., HITS] > 0
    unmasked = (base_l > base_r) | ((base_l == base_r) & (riv > lab)[:, None])
    right = jnp.where(affected, label_lo > others_hi, unmasked)
    wrong = jnp.where(affected, rival_lo > label_hi, ~unmasked)
    wrong |= affected & (rival_lo == label_hi) & (riv < lab)[:, None]
    valid = (r >= i * rows)[:, None]
    open_ = ~right & ~wrong & valid
    slots, num = compact(open_.reshape(-1), rows * y)
    slots = jnp.pad(slots, (0, SLOT_CHUNK), constant_values=rows * y)
    eblocks = (store.codes, store.ranked, store.queries, store.keys, store.values, bits)

    def settle(carry):
        j, correct = carry
        idx = jax.lax.dynamic_slice_in_dim(slots, j, SLOT_CHUNK)
        live = idx < rows * y
        b, c = jnp.where(live, idx // y, 0), jnp.where(live, idx % y, 0)
        delta, _ = kernels.over_blocks(mesh, _block_exact, eblocks, (lo, b, c, live))
        ok = (store.base[lo + b] + delta).argmax(-1) == store.labels[lo + b]
        return j + SLOT_CHUNK, correct.reshape(-1).at[idx].set(ok, mode="drop").reshape(rows, y)

    correct = jax.lax.while_loop(lambda c: c[0] < num, settle, (0, right))[1] & valid
    forget = lab[:, None] == classes[None, :]
    counts = counts + jnp.stack([(correct & forget).sum(0), (correct & ~forget).sum(0)], -1)
    add = jnp.stack([small[..., HITS], small[..., DEEPER], small[..., BEYOND], affected, open_], -1)
    return (counts, sizes + jnp.where(valid[..., None], add, 0).sum(0)), None


@functools.partial(jax.jit, static_argnames=("rows", "shift", "mesh"))
def _steps(store, cmin, cmax, bits, classes, carry, steps, *, rows, shift, mesh):
    step = functools.partial(
        _step, store, cmin, cmax, bits, classes, rows=rows, shift=shift, mesh=mesh
    )
    return jax.lax.scan(step, carry, steps)[0]


def evaluate_all_classes(
    store: StoredEval,
    classes,
    n: int,
    *,
    rows: int = 16,
    steps_per_call: int = 32,
    mesh=None,
    progress: bool = True,
):
    """UvA forgetting each of `classes` alone, evaluated on every row of `store` at once.

    Args:
      store: a :class:`~dkvb_jax.unlearning.stored_eval.StoredEval` with values and statistics.
      classes: the `Y` classes to forget, one at a time.
      n: UvA's N_a (keys masked per codebook).
      rows: evaluation rows bounded per step (a `[rows, Y, classes]` product).
      steps_per_call: steps per jitted call (one compile; a progress update per call).
      mesh: the store's mesh, or None.

    Returns:
      int `[Y, 2]` correct rows of the forgotten class and of the others, as
      :func:`~dkvb_jax.unlearning.stored_eval.evaluate_every_class` gives them, and the
      :class:`AllClassSizes`.
    """
    _require(store, "values", "top", "floor", "base", "rival", "pairs", "counts", "offsets")
    if not bool(jnp.all(store.ranked[..., 0] == store.codes)):
        raise ValueError(
            "the store's ranked keys must start with its stored codes (ranked[..., 0] == codes): "
            "build both from the same lookup."
        )
    if store.ranked.shape[-1] < 3:
        raise ValueError(
            f"evaluate_all_classes needs a stored ranking of at least 3 keys per codebook, got "
            f"{store.ranked.shape[-1]}; use stored_eval.evaluate_every_class."
        )
    classes = jnp.asarray(np.asarray(classes, np.int32))
    m = store.labels.shape[0]
    rows = min(rows, m)
    bits = class_masks(store, np.asarray(classes), n)
    codebooks = store.num_blocks * store.codes.shape[-1]
    low, high = int(store.values.min()), int(store.values.max())
    # The bounds add up to two value spans per codebook to a logit: all must stay int32.
    if codebooks * (max(-low, high) + 2 * (high - low)) >= 2**31:
        raise ValueError(
            f"fixed-point values in [{low}, {high}] over {codebooks} codebooks would overflow "
            "the int32 bounds; use stored_eval.evaluate_every_class, or values of a smaller "
            "range (e.g. EstimatorConfig(absent_class_value=None))."
        )
    shift = value_shift(store.values, codebooks)
    cmin, cmax = _extremes(store.values, mesh)
    y = classes.shape[0]
    carry = (jnp.zeros((y, 2), jnp.int32), jnp.zeros((y, len(AllClassSizes._fields)), jnp.int32))
    num_steps = -(-m // rows)
    fn = functools.partial(
        _steps, store, cmin, cmax, bits, classes, rows=rows, shift=shift, mesh=mesh
    )
    calls = range(0, num_steps, steps_per_call)
    for start in progress_bar(calls, desc="every class at once", disable=not progress):
        # Steps past the last (in the last call) count no rows.
        steps = jnp.arange(start, start + steps_per_call, dtype=jnp.int32)
        carry = fn(carry, jnp.minimum(steps, num_steps))
    counts, sizes = (np.asarray(a) for a in carry)
    return counts, AllClassSizes(*sizes.T)
