"""Every fast lookup path returns exactly what the dense reference lookup returns."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkvb_jax.model import lookup


def problem(seed, batch, codebooks, keys, dim, mask_p, integer):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: exact ties are common and every distance is representable
        q = rng.integers(-2, 3, (batch, codebooks, dim)).astype(np.float32)
        k = rng.integers(-2, 3, (codebooks, keys, dim)).astype(np.float32)
    else:
        q = rng.normal(size=(batch, codebooks, dim)).astype(np.float32)
        k = rng.normal(size=(codebooks, keys, dim)).astype(np.float32)
    mask = rng.random((codebooks, keys)) < mask_p
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask)


def assert_same_lookup(fast, ref):
    np.testing.assert_array_equal(np.asarray(fast.valid), np.asarray(ref.valid))
    np.testing.assert_array_equal(np.asarray(fast.indices), np.asarray(ref.indices))
    # The blocked re-rank uses direct differences, the dense path the matmul form.
    np.testing.assert_allclose(
        np.asarray(fast.distances), np.asarray(ref.distances), rtol=1e-5, atol=1e-5
    )


def dense(q, k, mask, top_k):
    return lookup.nearest_keys(q, k, mask, top_k=top_k, method="dense", chunk=0)


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("top_k", [1, 2, 5])
# 1: one key per block; 7 does not divide 30 keys (padded blocks); 64: a single block.
@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocked_equals_dense(integer, top_k, block):
    q, k, mask = problem(0, batch=11, codebooks=4, keys=30, dim=3, mask_p=0.3, integer=integer)
    fast = lookup.nearest_keys(q, k, mask, top_k=top_k, method="blocked", block=block)
    assert_same_lookup(fast, dense(q, k, mask, top_k))


@pytest.mark.parametrize("top_k", [1, 3])
def test_duplicate_keys_across_blocks_break_ties_to_lower_index(top_k):
    q, k, _ = problem(1, batch=9, codebooks=3, keys=24, dim=4, mask_p=0.0, integer=False)
    # Every key appears three times, in different blocks of 4: ties must resolve to the first.
    k = jnp.concatenate([k[:, :8]] * 3, axis=1)
    fast = lookup.nearest_keys(q, k, None, top_k=top_k, method="blocked", block=4)
    ref = dense(q, k, None, top_k)
    assert_same_lookup(fast, ref)
    assert int(jnp.max(fast.indices[..., 0])) < 8


@pytest.mark.parametrize("method", ["blocked", "dense", "approx"])
def test_all_masked_codebook_and_short_codebook(method):
    q, k, mask = problem(2, batch=6, codebooks=4, keys=16, dim=3, mask_p=0.0, integer=False)
    mask = mask.at[1].set(True).at[2, 1:].set(True)  # codebook 1: none active, 2: one active
    res = lookup.nearest_keys(q, k, mask, top_k=2, method=method, block=4)
    assert_same_lookup(res, dense(q, k, mask, 2))
    assert not bool(res.valid[:, 1].any())
    np.testing.assert_array_equal(np.asarray(res.indices[:, 2]), np.tile([0, -1], (6, 1)))
    assert np.isinf(np.asarray(res.distances[:, 1])).all()


@pytest.mark.parametrize("chunk", [None, 4, 100])
@pytest.mark.parametrize("memory_mb", [1e-3, 64.0])
def test_blocked_chunking_is_invisible(chunk, memory_mb):
    q, k, mask = problem(3, batch=13, codebooks=3, keys=32, dim=5, mask_p=0.2, integer=False)
    fast = lookup.nearest_keys(
        q, k, mask, top_k=2, method="blocked", block=8, chunk=chunk, memory_mb=memory_mb
    )
    assert_same_lookup(fast, dense(q, k, mask, 2))


@pytest.mark.parametrize("method", ["blocked", "dense"])
def test_ragged_remainder_chunk(method):
    q, k, mask = problem(4, batch=10, codebooks=2, keys=16, dim=3, mask_p=0.1, integer=True)
    res = lookup.nearest_keys(q, k, mask, top_k=1, method=method, block=4, chunk=3)
    assert_same_lookup(res, dense(q, k, mask, 1))


class BlockedVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_blocked_jit_and_eager_agree(self):
        q, k, mask = problem(5, batch=7, codebooks=3, keys=20, dim=3, mask_p=0.3, integer=True)
        fn = self.variant(
            lambda q, k, m: lookup.nearest_keys(q, k, m, top_k=2, method="blocked", block=4)
        )
        assert_same_lookup(fn(q, k, mask), dense(q, k, mask, 2))


_blocked_jit = jax.jit(
    lambda q, k, m: lookup.nearest_keys(q, k, m, top_k=3, method="blocked", block=8)
)
_dense_jit = jax.jit(lambda q, k, m: dense(q, k, m, 3))


# Fixed shapes (one compilation); the data, masks and ties vary.
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    mask_p=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    integer=st.booleans(),
)
def test_blocked_property(seed, mask_p, integer):
    q, k, mask = problem(seed, 6, 3, 43, 3, mask_p, integer)
    assert_same_lookup(_blocked_jit(q, k, mask), _dense_jit(q, k, mask))


def test_auto_uses_blocked_only_with_enough_blocks():
    assert lookup.resolve_method("auto", 4096, 64) == "blocked"
    assert lookup.resolve_method("auto", 100, 64) == "dense"
    assert lookup.resolve_method("dense", 4096, 64) == "dense"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fastest"}, "method must be one of"),
        ({"block": 0}, "block must be a positive integer"),
        ({"block": 2.0}, "block must be a positive integer"),
    ],
)
def test_bad_options_raise(kwargs, match):
    q, k, _ = problem(6, batch=2, codebooks=2, keys=8, dim=2, mask_p=0.0, integer=False)
    with pytest.raises(ValueError, match=match):
        lookup.nearest_keys(q, k, **kwargs)


def test_blocked_row_bytes_bound_chunk_memory():
    # The paper's setting under the default 64 MiB budget gives a chunk of many rows.
    row = lookup._blocked_row_bytes(256, 4096, 14, 1, lookup.DEFAULT_BLOCK, lookup.DEFAULT_GROUP)
    assert 50 <= (64 * 2**20) // row <= 10_000


@pytest.mark.parametrize("group", [1, 2, 3, 6, 100])
def test_codebook_groups_are_invisible(group):
    q, k, mask = problem(8, batch=5, codebooks=6, keys=24, dim=3, mask_p=0.3, integer=True)
    fast = lookup.nearest_keys(q, k, mask, top_k=2, method="blocked", block=4, codebook_group=group)
    assert_same_lookup(fast, dense(q, k, mask, 2))
    assert lookup._codebook_group(6, group) in (1, 2, 3, 6)
