"""Evaluation from stored codes equals a brute-force masked search, on one device or a mesh."""

import jax

if jax.device_count() < 8:
    jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkvb_jax import parallel  # noqa: E402
from dkvb_jax.exact import pair_counts  # noqa: E402
from dkvb_jax.unlearning import stored_eval  # noqa: E402

C, K, D, Y, M, N_TRAIN, DEPTH = 8, 64, 3, 6, 300, 600, 4
# One set of caps that fits every case below, so each store shape compiles once; the undecided
# rows' logits are summed 64 rows at a time (8 chunks of the 512 row slots).
CAPS = stored_eval.make_caps(M * C, M * C, M, M * C, row_chunk=64)


def _nearest(q, keys, sel=None):
    """Brute force: `[n, C]` nearest (unselected) keys by direct squared differences."""
    d = np.sum(np.square(q[:, :, None, :] - keys[None]), axis=-1)
    if sel is not None:
        d = np.where(sel[None], np.inf, d)
    return np.argsort(d, axis=-1, kind="stable")


def _problem(seed=0, blocks=1, hard=False):
    """A tiny model; a `hard` one never trains class Y - 1 (a constant value column) and has
    coarse values, so that many logits tie (argmax takes the first)."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((C, K, D)).astype(np.float32)
    centers = rng.standard_normal((Y, C, D)).astype(np.float32)
    y_tr = rng.integers(0, Y - hard, N_TRAIN)
    y_ev = rng.integers(0, Y, M)
    q_tr = (centers[y_tr] + rng.standard_normal((N_TRAIN, C, D))).astype(np.float32)
    q_ev = (centers[y_ev] + rng.standard_normal((M, C, D))).astype(np.float32)
    codes_tr = _nearest(q_tr, keys)[..., 0].astype(np.int16)
    ranked = _nearest(q_ev, keys)[..., :DEPTH]
    stats = pair_counts.count_pairs(codes_tr, y_tr, num_keys=K, num_classes=Y, num_blocks=blocks)
    values = pair_counts.derive_fixed_point_values(stats, progress=False)
    if hard:
        values = (values >> 19) << 19
    return keys, q_ev, y_ev, ranked, stats, values


def _reference(keys, q_ev, y_ev, values, sel):
    """Correct rows of the masked model: a full search and the full integer logits."""
    codes = _nearest(q_ev, keys, sel)[..., 0]
    qv = np.asarray(values).reshape(C, K, Y)
    logits = qv[np.arange(C)[None], codes].sum(1)
    return logits.argmax(-1) == y_ev


def _store(problem, mesh=None):
    keys, q_ev, y_ev, ranked, stats, values = problem
    if mesh is not None:
        values = jax.device_put(values, jax.NamedSharding(mesh, jax.P("codebook")))
    return stored_eval.build(stats, values, ranked[..., 0], ranked, q_ev, keys, y_ev, mesh=mesh)


_uva = jax.jit(stored_eval.uva_selection, static_argnums=2)


@pytest.mark.parametrize("blocks, hard", [(1, False), (8, True)])
def test_uva_matches_brute_force_masked_search_on_one_device_and_a_mesh(blocks, hard):
    """On a mesh the results equal the brute force too, so they equal one device's bit for bit."""
    problem = _problem(blocks=blocks, hard=hard)
    keys, q_ev, y_ev, _, stats, values = problem
    mesh = parallel.data_codebook_mesh(1, blocks) if blocks > 1 else None
    store = _store(problem, mesh)
    if mesh is not None:
        one = _store(problem)  # the same blocks on one device
        for name in ("base", "rival", "top", "floor"):
            np.testing.assert_array_equal(getattr(store, name), getattr(one, name))
        for name in ("values", "top", "floor"):
            array = getattr(store, name)
            assert array.addressable_shards[0].data.nbytes * blocks == array.nbytes, name
    undecided, affected, exact = 0, 0, 0
    for label, n in [(0, 3), (Y - 2, 40), (Y - 1, 10)]:  # 40 > DEPTH: exact fallbacks
        sel = _uva(store, label, n)
        correct, sizes = stored_eval.evaluate_selection(store, sel, CAPS, mesh)
        want = _reference(keys, q_ev, y_ev, values, np.asarray(sel).reshape(C, K))
        np.testing.assert_array_equal(np.asarray(correct), want)
        assert int(sizes.overflow) == 0
        # Each undecided row has at least one masked pair.
        assert int(sizes.undecided) <= int(sizes.undecided_pairs) <= int(sizes.pairs)
        undecided, affected = undecided + int(sizes.undecided), affected + int(sizes.rows)
        exact += int(sizes.exact)
    assert exact > 0
    # Both paths ran: rows decided by the bounds alone, and rows given their full logits.
    assert 0 < undecided < affected


def test_every_class_counts_match_brute_force_and_caps_grow():
    problem = _problem(seed=2, blocks=2)  # two blocks on one device: a scan over them
    keys, q_ev, y_ev, _, stats, values = problem
    store = _store(problem)
    small = stored_eval.make_caps(1, 1, 1, 1, row_chunk=64)
    # Batches of 4 over 6 classes: the last batch is padded. The caps start at the smallest,
    # too small for the masked pairs, so this also checks that overflows are reported.
    counts, sizes, caps = stored_eval.evaluate_every_class(store, range(Y), 5, caps=small, batch=4)
    assert caps.pairs > small.pairs and caps.rows > caps.row_chunk == small.row_chunk
    for label in range(Y):
        sel = np.asarray(_uva(store, label, 5)).reshape(C, K)
        want = _reference(keys, q_ev, y_ev, values, sel)
        forget = y_ev == label
        assert counts[label].tolist() == [want[forget].sum(), want[~forget].sum()]
        hits = sel[np.arange(C), _nearest(q_ev, keys)[..., 0]]
        assert sizes[label].tolist()[:3:2] == [hits.sum(), hits.any(1).sum()]


def test_values_added_after_the_build_give_the_same_store():
    problem = _problem(seed=1, blocks=2)
    keys, q_ev, y_ev, ranked, stats, values = problem
    bare = stored_eval.build(stats, None, ranked[..., 0], ranked, q_ev, keys, y_ev)
    assert bare.values is None and bare.base is None
    with pytest.raises(ValueError, match="no values, top, floor, base, rival"):
        stored_eval.evaluate_selection(bare, _uva(_store(problem), 0, 3), CAPS)
    with pytest.raises(ValueError, match="no pairs, counts"):
        stored_eval.uva_selection(bare.replace(pairs=None, counts=None), 0, 3)
    later, now = stored_eval.with_values(bare, values), _store(problem)
    for name in ("values", "top", "floor", "base", "rival", *stored_eval.BLOCK_FIELDS):
        np.testing.assert_array_equal(getattr(later, name), getattr(now, name), err_msg=name)


def test_key_bounds_match_numpy():
    rng = np.random.default_rng(3)
    values = rng.integers(-50, 0, (2, 3, 5, 4)).astype(np.int32)
    values[0, 1, :, 2] = -99  # a class whose value never changes in that codebook
    top, floor = stored_eval.key_bounds(values)
    np.testing.assert_array_equal(top, values.max(-1))
    varies = (values != values[:, :, :1]).any(2, keepdims=True)
    want = np.minimum(np.where(varies, values, 10**6).min(-1), values.max(-1))
    np.testing.assert_array_equal(floor, want)


@pytest.mark.parametrize("n, density, size", [(1000, 0.1, 128), (64, 1.0, 128), (37, 0.0, 64)])
def test_compact_is_nonzero_with_a_size(n, density, size):
    mask = np.random.default_rng(n).random(n) < density
    got, count = jax.jit(stored_eval.compact, static_argnums=1)(mask, size)
    want = np.flatnonzero(mask)[:size]
    np.testing.assert_array_equal(got, np.pad(want, (0, size - want.size), constant_values=n))
    assert int(count) == mask.sum()


@pytest.mark.parametrize("blocks", [1, 8])
def test_vote_sums_and_correct_rows_by_row_chunks_equal_the_whole_sums(blocks, monkeypatch):
    """300 rows in chunks of 64: the last chunk overlaps the one before, on one device or a
    mesh, and the sums and correct rows equal NumPy's over all rows at once."""
    problem = _problem(seed=3, blocks=blocks)
    keys, q_ev, y_ev, ranked, _, values = problem
    mesh = parallel.data_codebook_mesh(1, blocks) if blocks > 1 else None
    store = _store(problem, mesh)
    monkeypatch.setattr(stored_eval, "ROW_CHUNK", 64)
    for fn in (stored_eval.vote_sums, stored_eval.correct_with_values):
        fn.clear_cache()  # traced with the default chunk elsewhere
    codes = ranked[..., 0]
    qv = np.asarray(values).reshape(C, K, Y).astype(np.int64)
    want = qv[np.arange(C)[None], codes].sum(1)
    sums = stored_eval.vote_sums(store.values, store.codes, mesh)
    np.testing.assert_array_equal(np.asarray(sums), want)
    correct = stored_eval.correct_with_values(store, store.values, mesh)
    np.testing.assert_array_equal(np.asarray(correct), want.argmax(-1) == y_ev)
    for fn in (stored_eval.vote_sums, stored_eval.correct_with_values):
        fn.clear_cache()  # so later callers trace with the default chunk again
