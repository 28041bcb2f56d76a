"""Evaluation from stored codes equals a brute-force masked search, on one device or a mesh."""

import jax

if jax.device_count() < 8:
    jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkvb_jax import parallel  # noqa: E402
from dkvb_jax.exact import derive_values, pair_counts  # noqa: E402
from dkvb_jax.unlearning import stored_eval  # noqa: E402

C, K, D, Y, M, N_TRAIN, DEPTH = 8, 64, 3, 6, 300, 600, 4


def _nearest(q, keys, sel=None):
    """Brute force: `[n, C]` nearest (unselected) keys by direct squared differences."""
    d = np.sum(np.square(q[:, :, None, :] - keys[None]), axis=-1)
    if sel is not None:
        d = np.where(sel[None], np.inf, d)
    return np.argsort(d, axis=-1, kind="stable")


def _problem(seed=0, blocks=1):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((C, K, D)).astype(np.float32)
    centers = rng.standard_normal((Y, C, D)).astype(np.float32)
    y_tr = rng.integers(0, Y, N_TRAIN)
    y_ev = rng.integers(0, Y, M)
    q_tr = (centers[y_tr] + rng.standard_normal((N_TRAIN, C, D))).astype(np.float32)
    q_ev = (centers[y_ev] + rng.standard_normal((M, C, D))).astype(np.float32)
    codes_tr = _nearest(q_tr, keys)[..., 0].astype(np.int16)
    ranked = _nearest(q_ev, keys)[..., :DEPTH]
    stats = pair_counts.count_pairs(codes_tr, y_tr, num_keys=K, num_classes=Y, num_blocks=blocks)
    counts = np.concatenate([stats.dense_block(b) for b in range(blocks)])
    values = np.asarray(derive_values(counts))
    return keys, q_ev, y_ev, ranked, stats, values


def _reference(keys, q_ev, y_ev, values, sel):
    codes = _nearest(q_ev, keys, sel)[..., 0]
    qv = np.asarray(stored_eval.fixed_point(values))
    logits = qv[np.arange(C)[None], codes].sum(1)
    return logits.argmax(-1) == y_ev


def _store(problem, blocks, mesh):
    keys, q_ev, y_ev, ranked, stats, values = problem
    qv = stored_eval.derive_fixed_point_values(stats, mesh=mesh, progress=False)
    return stored_eval.build(stats, qv, ranked[..., 0], ranked, q_ev, keys, y_ev, mesh=mesh)


@pytest.mark.parametrize("blocks", [1, 4])
def test_uva_matches_brute_force_masked_search(blocks):
    problem = _problem(blocks=blocks)
    keys, q_ev, y_ev, _, stats, values = problem
    store = _store(problem, blocks, None)
    caps = stored_eval.make_caps(M * C, M * C, M)
    for label, n in [(0, 3), (5, 40)]:  # 40 > DEPTH: some fallbacks search all keys
        correct, sizes = stored_eval.evaluate_uva(store, label, n, caps)
        hist = stats.class_histogram(label)
        sel = np.asarray(stored_eval.mask_top_n(hist, n))
        np.testing.assert_array_equal(
            np.asarray(correct), _reference(keys, q_ev, y_ev, values, sel)
        )
        assert int(sizes.overflow) == 0
    assert int(sizes.exact) > 0  # the deep case exercised the exact fallback


def test_mesh_is_bit_identical_and_sharded():
    problem = _problem(seed=1, blocks=8)
    mesh = parallel.data_codebook_mesh(1, 8)
    one, sharded = _store(problem, 8, None), _store(problem, 8, mesh)
    np.testing.assert_array_equal(np.asarray(one.base), np.asarray(sharded.base))
    shard = sharded.values.addressable_shards[0].data
    assert shard.nbytes * 8 == sharded.values.nbytes
    caps = stored_eval.make_caps(M * C, M * C, M)
    for label in range(Y):
        a, sa = stored_eval.evaluate_uva(one, label, 6, caps)
        b, sb = stored_eval.evaluate_uva(sharded, label, 6, caps, mesh)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert [int(x) for x in sa] == [int(x) for x in sb]


def test_overflowing_caps_are_reported():
    problem = _problem(blocks=1)
    store = _store(problem, 1, None)
    _, sizes = stored_eval.evaluate_uva(store, 0, 20, stored_eval.Caps(64, 64, 64))
    assert int(sizes.overflow) > 0


def test_blockwise_values_equal_the_whole_table():
    _, _, _, _, stats, values = _problem(blocks=2)
    got = stored_eval.derive_fixed_point_values(stats, progress=False)
    want = np.asarray(stored_eval.fixed_point(values)).reshape(got.shape)
    np.testing.assert_array_equal(np.asarray(got), want)
