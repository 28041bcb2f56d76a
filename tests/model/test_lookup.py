"""The nearest-key lookup against a brute-force NumPy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax.model import lookup


def reference_lookup(queries, keys, mask, top_k):
    """Brute force: exact float64 distances, stable sort (ties -> lower index)."""
    d = ((queries[:, :, None, :].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1)
    d = np.where(mask[None], np.inf, d)
    order = np.argsort(d, axis=-1, kind="stable")[..., :top_k]
    dist = np.take_along_axis(d, order, axis=-1)
    valid = np.isfinite(dist)
    return np.where(valid, order, -1), valid


def random_problem(seed, batch=13, codebooks=5, keys=17, dim=3, mask_p=0.3, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # small integers make exact ties common and distances exactly representable
        q = rng.integers(-2, 3, (batch, codebooks, dim)).astype(np.float32)
        k = rng.integers(-2, 3, (codebooks, keys, dim)).astype(np.float32)
    else:
        q = rng.normal(size=(batch, codebooks, dim)).astype(np.float32)
        k = rng.normal(size=(codebooks, keys, dim)).astype(np.float32)
    mask = rng.random((codebooks, keys)) < mask_p
    return q, k, mask


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("chunk", [0, 1, 4, None])
def test_matches_bruteforce(seed, top_k, integer, chunk):
    q, k, mask = random_problem(seed, integer=integer)
    res = lookup.nearest_keys(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask), top_k=top_k, chunk=chunk
    )
    ref_idx, ref_valid = reference_lookup(q, k, mask, top_k)
    np.testing.assert_array_equal(np.asarray(res.valid), ref_valid)
    np.testing.assert_array_equal(np.asarray(res.indices), ref_idx)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("chunk", [1, 3, 5, 8, 64])
def test_chunked_equals_direct(top_k, chunk):
    q, k, mask = random_problem(7, batch=21, keys=33)
    args = (jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask))
    direct = lookup.nearest_keys(*args, top_k=top_k, chunk=0)
    chunked = lookup.nearest_keys(*args, top_k=top_k, chunk=chunk)
    np.testing.assert_array_equal(np.asarray(chunked.indices), np.asarray(direct.indices))
    np.testing.assert_array_equal(np.asarray(chunked.valid), np.asarray(direct.valid))
    # XLA may block the matmul differently per chunk shape: distances agree to float32 rounding.
    np.testing.assert_allclose(
        np.asarray(chunked.distances), np.asarray(direct.distances), rtol=1e-5
    )


def test_masked_keys_never_returned():
    q, k, mask = random_problem(3, batch=50, keys=20, mask_p=0.7)
    res = lookup.nearest_keys(jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask), top_k=2)
    idx, valid = np.asarray(res.indices), np.asarray(res.valid)
    cb = np.broadcast_to(np.arange(q.shape[1])[None, :, None], idx.shape)
    assert not mask[cb[valid], idx[valid]].any()


def test_all_masked_codebook_is_invalid_and_finite_elsewhere():
    q, k, mask = random_problem(5, mask_p=0.0)
    mask[2] = True  # codebook 2 entirely switched off
    mask[3, 1:] = True  # codebook 3 has a single active key: top-2 gives one valid entry
    res = lookup.nearest_keys(jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask), top_k=2)
    valid = np.asarray(res.valid)
    assert not valid[:, 2].any()
    np.testing.assert_array_equal(valid[:, 3], np.tile([True, False], (q.shape[0], 1)))
    np.testing.assert_array_equal(np.asarray(res.indices)[:, 2], -1)
    np.testing.assert_array_equal(np.asarray(res.indices)[:, 3, 0], 0)
    assert np.isfinite(np.asarray(res.distances)[valid]).all()


@pytest.mark.parametrize("jit", [False, True])
def test_jit_and_no_jit_agree(jit):
    q, k, mask = random_problem(11, integer=True)
    fn = lambda *a: lookup.nearest_keys(*a, top_k=2, chunk=4)  # noqa: E731
    ref = fn(q, k, mask)
    out = (jax.jit(fn) if jit else fn)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask))
    chex.assert_trees_all_equal(out, ref)


def test_vmap_over_masks_matches_loop():
    q, k, _ = random_problem(2)
    masks = np.random.default_rng(0).random((4, *k.shape[:2])) < 0.5
    batched = jax.vmap(lambda m: lookup.nearest_keys(q, k, m, top_k=1).indices)(masks)
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(batched[i], lookup.nearest_keys(q, k, m, top_k=1).indices)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(top_k=0), "top_k"),
        (dict(top_k=18), "top_k"),
        (dict(chunk=-1), "chunk"),
    ],
)
def test_bad_arguments(kwargs, match):
    q, k, mask = random_problem(0)
    with pytest.raises(ValueError, match=match):
        lookup.nearest_keys(q, k, mask, **kwargs)


def test_bad_shapes():
    q, k, mask = random_problem(0)
    with pytest.raises(ValueError, match="keys must have shape"):
        lookup.nearest_keys(q, k[:, :, :2], mask)
    with pytest.raises(ValueError, match="search_mask"):
        lookup.nearest_keys(q, k, mask[:, :3])


def test_auto_chunk_respects_budget():
    chunk = lookup.auto_chunk(256, 4096, memory_mb=64)
    assert chunk * 256 * 4096 * 4 <= 64 * 2**20
    assert lookup.auto_chunk(256, 4096, memory_mb=1e-6) == 1
