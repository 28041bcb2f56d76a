"""Array-level selections against brute-force NumPy references; jit/vmap/psum composition."""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unlearning_testutil import np_top_n

from dkvb_jax.training import usage_from_codes
from dkvb_jax.unlearning import selection

# A small range of counts: many ties.
COUNTS = hnp.arrays(
    np.int32, st.tuples(st.integers(1, 3), st.integers(1, 9)), elements=st.integers(0, 4)
)


@settings(max_examples=40, deadline=None)
@given(counts=COUNTS, n=st.integers(1, 9))
def test_mask_top_n_matches_brute_force(counts, n):
    np.testing.assert_array_equal(selection.mask_top_n(counts, n), np_top_n(counts, n))
    loop_free = selection.mask_top_n(counts, n, loop_free=True)
    np.testing.assert_array_equal(loop_free, np_top_n(counts, n))


# Rows longer than the tie-breaking block (64 keys), negative entries and values up to int32's
# limit: the bisection's bounds and the blocked tie scan at their edges.
@settings(max_examples=40, deadline=None)
@given(
    counts=hnp.arrays(
        np.int32,
        st.tuples(st.integers(1, 3), st.integers(60, 200)),
        elements=st.one_of(st.integers(-3, 3), st.integers(0, 2**31 - 1)),
    ),
    n=st.integers(1, 200),
)
def test_mask_top_n_long_rows_wide_values(counts, n):
    np.testing.assert_array_equal(selection.mask_top_n(counts, n), np_top_n(counts, n))


@pytest.mark.parametrize("n", [1, 63, 64, 65, 128, 129, 199, 200])
def test_mask_top_n_all_tied_splits_at_block_edges(n):
    """Every entry tied: the first n keys, also where the n-th sits at a tie-block edge."""
    counts = np.full((2, 200), 7, np.int32)
    counts[1, ::3] = 9  # 67 above the tie, the rest tied
    np.testing.assert_array_equal(selection.mask_top_n(counts, n), np_top_n(counts, n))


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8, np.uint32, np.float32])
@pytest.mark.parametrize("n", [1, 64, 70])
def test_mask_top_n_at_the_dtype_limit(dtype, n):
    """Counts at their dtype's largest value: the bisection's upper bound must stay above them."""
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 3e38
    counts = np.full((2, 70), top, dtype)
    counts[1, ::4] = 0
    expected = np_top_n(counts.astype(np.float64), n)  # the reference negates: no wrap-around
    np.testing.assert_array_equal(selection.mask_top_n(counts, n), expected)


class TestJitEqualsNoJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_top_n_static_n(self):
        counts = np.random.default_rng(0).integers(0, 5, (4, 16))
        fn = self.variant(selection.mask_top_n, static_argnums=1)
        np.testing.assert_array_equal(fn(counts, 3), np_top_n(counts, 3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_top_n_traced_n_vmapped(self):
        counts = np.random.default_rng(1).integers(0, 5, (4, 16))
        fn = self.variant(jax.vmap(selection.mask_top_n, in_axes=(None, 0)))
        out = fn(counts, jnp.arange(1, 6))
        for i, n in enumerate(range(1, 6)):
            np.testing.assert_array_equal(out[i], np_top_n(counts, n))

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_class_union(self):
        usage = np.random.default_rng(2).integers(0, 6, (5, 3, 12))
        forget = np.array([False, True, False, True, False])
        out = self.variant(selection.mask_top_n_per_class, static_argnums=2)(usage, forget, 2)
        np.testing.assert_array_equal(out, np_top_n(usage[1], 2) | np_top_n(usage[3], 2))


def test_codes_selection_marks_every_retrieved_key_of_weighted_rows():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 10, (6, 4, 2)).astype(np.int32)
    valid = rng.random((6, 4, 2)) > 0.2
    w = np.arange(6) < 4
    expected = np.zeros((4, 10), bool)
    for i, c, j in np.ndindex(idx.shape):
        if valid[i, c, j] and w[i]:
            expected[c, idx[i, c, j]] = True
    np.testing.assert_array_equal(selection.codes_selection(idx, valid, 10, weights=w), expected)


@pytest.mark.parametrize("ratio,margin", [(1.0, 0.0), (4.0, 0.0), (1.0, 0.1), (0.0, 0.5)])
def test_retain_aware_matches_rate_rule_and_counts_spared(ratio, margin):
    rng = np.random.default_rng(4)
    forget = rng.integers(0, 5, (3, 8))
    retain = rng.integers(0, 40, (3, 8))
    cand = rng.random((3, 8)) > 0.3
    kept, spared = selection.retain_aware(cand, forget, retain, ratio=ratio, margin=margin)
    fr = forget / np.maximum(forget.sum(-1, keepdims=True), 1)
    rr = retain / np.maximum(retain.sum(-1, keepdims=True), 1)
    spare = cand & (rr > ratio * fr + margin)
    np.testing.assert_array_equal(kept, cand & ~spare)
    np.testing.assert_array_equal(spared, spare.sum(-1))


def test_psum_usage_under_shard_map_equals_global_count_and_selection():
    n_dev = jax.device_count()
    assert n_dev >= 2, "tests/conftest.py forces 8 CPU devices"
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 16, (n_dev * 8, 3, 1)).astype(np.int32)
    valid = rng.random(idx.shape) > 0.1
    labels = rng.integers(0, 4, n_dev * 8).astype(np.int32)
    mesh = jax.make_mesh((n_dev,), ("data",))
    p = jax.sharding.PartitionSpec

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(p("data"), p("data"), p("data")), out_specs=p())
    def sharded(i, v, y):
        usage = selection.psum_usage(i, v, 16, "data", labels=y, num_classes=4)
        # The selection computed per device from the summed histogram is the global one.
        return usage, selection.mask_top_n(usage[2], 3)

    shard = jax.sharding.NamedSharding(mesh, p("data"))
    usage, sel = sharded(*(jax.device_put(a, shard) for a in (idx, valid, labels)))
    np.testing.assert_array_equal(usage, usage_from_codes(idx, valid, 16, labels, 4))
    np.testing.assert_array_equal(sel, np_top_n(np.asarray(usage[2]), 3))
