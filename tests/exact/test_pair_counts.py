"""Sparse per-(class, pair) counts against a dense brute-force count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax import parallel
from dkvb_jax.errors import InputError
from dkvb_jax.exact import EstimatorConfig, derive_values, pair_counts

C, K, Y = 8, 32, 5


def _data(n=400, seed=0, top_k=None):
    rng = np.random.default_rng(seed)
    shape = (n, C) if top_k is None else (n, C, top_k)
    codes = rng.integers(-1, K, shape).astype(np.int16)  # -1: invalid, counts nothing
    return codes, rng.integers(0, Y, n)


def _dense(codes, labels):
    out = np.zeros((Y, C, K), np.int64)
    c3 = codes.reshape(codes.shape[0], C, -1)
    for i in range(c3.shape[0]):
        for b in range(C):
            for k in c3[i, b]:
                if k >= 0:
                    out[labels[i], b, k] += 1
    return out


@pytest.mark.parametrize("blocks, top_k", [(1, None), (2, None), (4, 2), (8, None)])
def test_histograms_and_dense_counts_match_brute_force(blocks, top_k):
    codes, labels = _data(top_k=top_k)
    stats = pair_counts.count_pairs(codes, labels, num_keys=K, num_classes=Y, num_blocks=blocks)
    dense = _dense(codes, labels)
    for y in range(Y):
        np.testing.assert_array_equal(stats.class_histogram(y), dense[y])
    full = np.concatenate([stats.dense_block(b) for b in range(blocks)])
    np.testing.assert_array_equal(full, dense.transpose(1, 2, 0))
    width = C // blocks
    np.testing.assert_array_equal(
        stats.dense_block(blocks - 1, width // 2, width),
        dense.transpose(1, 2, 0)[C - width + width // 2 :],
    )
    assert stats.nnz == np.count_nonzero(dense) and stats.counts[0].dtype == np.uint16


def test_removal_equals_recount_and_fingerprint_ignores_layout():
    codes, labels = _data(seed=1)
    stats = pair_counts.count_pairs(codes, labels, num_keys=K, num_classes=Y, num_blocks=2)
    rm = np.random.default_rng(2).choice(len(labels), 37, replace=False)
    keep = np.setdiff1d(np.arange(len(labels)), rm)
    removed = stats.remove(codes[rm], labels[rm])
    recount = pair_counts.count_pairs(
        codes[keep[::-1]], labels[keep[::-1]], num_keys=K, num_classes=Y, num_blocks=2
    )
    assert removed.equals(recount) and not removed.equals(stats)
    one_block = pair_counts.count_pairs(codes[keep], labels[keep], num_keys=K, num_classes=Y)
    assert one_block.fingerprint() == removed.fingerprint() != stats.fingerprint()


def test_large_counts_widen_to_int32_and_narrow_after_a_removal():
    """One class's count above uint16 widens the whole block; removing below narrows it."""
    codes = np.zeros((70_003, 2), np.int16)
    codes[-3:] = 1
    labels = np.r_[np.zeros(70_000, int), np.ones(3, int)]
    stats = pair_counts.count_pairs(codes, labels, num_keys=4, num_classes=2)
    assert stats.counts[0].dtype == np.int32 and stats.class_histogram(0)[0, 0] == 70_000
    removed = stats.remove(codes[:10_000], labels[:10_000])
    recount = pair_counts.count_pairs(codes[10_000:], labels[10_000:], num_keys=4, num_classes=2)
    assert removed.counts[0].dtype == np.uint16 and removed.equals(recount)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, c, y: s.remove(c[:3], (y[:3] + 1) % Y), "never counted"),
        (lambda s, c, y: s.class_histogram(Y), "label must be an int"),
        (lambda s, c, y: s.dense_block(0, 3, 2), "start < stop"),
        (
            lambda s, c, y: pair_counts.count_pairs(c, y, num_keys=K, num_classes=Y, num_blocks=3),
            "num_blocks must be a positive int dividing",
        ),
        (
            lambda s, c, y: pair_counts.count_pairs(c, y[:5], num_keys=K, num_classes=Y),
            "labels must be int",
        ),
        (
            lambda s, c, y: pair_counts.count_pairs(c, y, num_keys=4, num_classes=Y),
            "codes must lie in",
        ),
        (
            lambda s, c, y: s.equals_recount(c, y, where=np.ones(len(y), int)),
            "where must be bool",
        ),
        (
            lambda s, c, y: pair_counts.count_pairs(
                c, y, num_keys=K, num_classes=Y, where=np.ones(3, bool)
            ),
            "where must be bool",
        ),
    ],
)
def test_bad_input(call, match):
    codes, labels = _data(n=50)
    stats = pair_counts.count_pairs(codes, labels, num_keys=K, num_classes=Y)
    with pytest.raises(InputError, match=match):
        call(stats, codes, labels)


@pytest.mark.parametrize("mesh_shape", [None, (1, 8), (2, 4), (1, 2)])
def test_derived_values_on_each_device_equal_the_whole_table(mesh_shape):
    """Each device derives only its own blocks (a 'data' axis holds copies): the assembled
    array equals the fixed-point values of the whole dense table, laid out over the mesh."""
    codes, labels = _data(seed=3)
    stats = pair_counts.count_pairs(codes, labels, num_keys=K, num_classes=Y, num_blocks=8)
    mesh = None if mesh_shape is None else parallel.data_codebook_mesh(*mesh_shape)
    values = pair_counts.derive_fixed_point_values(stats, mesh=mesh, progress=False)
    full = jnp.asarray(np.concatenate([stats.dense_block(b) for b in range(8)]))
    want = np.asarray(pair_counts.fixed_point(derive_values(full, EstimatorConfig())))
    want = want.reshape(values.shape)
    np.testing.assert_array_equal(np.asarray(values), want)
    if mesh is not None:
        assert values.sharding.is_equivalent_to(
            jax.NamedSharding(mesh, jax.P("codebook")), values.ndim
        )
        for shard in values.addressable_shards:
            np.testing.assert_array_equal(shard.data, want[shard.index])


@pytest.mark.parametrize("blocks, top_k", [(1, None), (4, None), (2, 2)])
def test_recount_of_kept_rows_compares_without_building_it(blocks, top_k):
    """`equals_recount(where=keep)` agrees with building `count_pairs(codes[keep])` and
    comparing, for the counts after a removal (equal) and before it (not); so does
    `count_pairs(where=keep)` itself."""
    codes, labels = _data(seed=4, top_k=top_k)
    stats = pair_counts.count_pairs(codes, labels, num_keys=K, num_classes=Y, num_blocks=blocks)
    keep = np.random.default_rng(5).random(len(labels)) > 0.1
    removed = stats.remove(codes[~keep], labels[~keep])
    built = pair_counts.count_pairs(
        codes[keep], labels[keep], num_keys=K, num_classes=Y, num_blocks=blocks
    )
    masked = pair_counts.count_pairs(
        codes, labels, num_keys=K, num_classes=Y, num_blocks=blocks, where=keep
    )
    assert masked.equals(built) and removed.equals(built)
    assert removed.equals_recount(codes, labels, where=keep)
    assert stats.equals_recount(codes, labels) and not stats.equals_recount(
        codes, labels, where=keep
    )
    assert not removed.equals_recount(codes, labels)
    # One changed code in one kept row is found.
    changed = codes.copy()
    row = np.flatnonzero(keep)[0]
    changed[row, 0] = (changed[row, 0] + 1) % K
    assert not removed.equals_recount(changed, labels, where=keep)
