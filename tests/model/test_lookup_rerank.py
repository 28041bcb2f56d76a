"""The accelerator search (``rerank``) returns exactly what the exact searches return, on CPU.

The bfloat16 first stage is explicit (bfloat16 inputs, float32 accumulation), so these CPU runs
exercise the numerics a TPU MXU or a GPU tensor core applies; near-ties that bfloat16 cannot
separate must reach the exact fallbacks.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_lookup import reference_lookup
from test_lookup_fast import assert_same_lookup, dense, problem

from dkvb_jax.config import LOOKUP_METHODS, DKVBConfig
from dkvb_jax.model import DKVB, lookup
from dkvb_jax.model import rerank as rerank_lib


@functools.partial(jax.jit, static_argnames=("top_k", "candidates", "chunk"))
def rerank(q, k, mask, top_k, candidates=None, chunk=0):
    # Jitted: one compilation per shape instead of an eager dispatch per op keeps the file fast.
    return lookup.nearest_keys(
        q, k, mask, top_k=top_k, method="rerank", candidates=candidates, chunk=chunk
    )


@functools.partial(jax.jit, static_argnames=("top_k", "candidates"))
def _certified(q, k, mask, top_k, candidates):
    prepared = rerank_lib.prepare(k)
    return rerank_lib.search_rows(q, k, mask, prepared, top_k, candidates)[2]


def certified(q, k, mask, top_k, candidates):
    """bool `[rows, codebooks]`: where the bfloat16 stage alone proved the result."""
    mask = jnp.zeros(k.shape[:2], bool) if mask is None else mask
    return np.asarray(_certified(q, k, mask, top_k, candidates))


dense = jax.jit(dense, static_argnames="top_k")


def assert_matches_reference(res, q, k, mask, top_k):
    """Same keys as the float64 brute force (inputs whose ties float32 can separate)."""
    mask = np.zeros(k.shape[:2], bool) if mask is None else np.asarray(mask)
    ref_idx, ref_valid = reference_lookup(np.asarray(q), np.asarray(k), mask, top_k)
    np.testing.assert_array_equal(np.asarray(res.valid), ref_valid)
    np.testing.assert_array_equal(np.asarray(res.indices), ref_idx)


def near_ties(seed, batch, codebooks, keys, dim, offset, spread):
    """Every key at distance `1 + eps_j` of its query, `eps_j` distinct and below `spread`.

    The distances differ by far less than bfloat16 resolves (relative 2^-8) but more than
    float32 rounding, so only the exact stage can order them. `offset` moves everything away
    from the origin, which inflates the bfloat16 error of the uncentred matmul form.
    """
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, codebooks, dim)) + offset
    u = rng.normal(size=(batch, codebooks, keys, dim))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    # On a half sphere, so the keys' centre (where the bfloat16 stage centres) is not the query.
    u[..., 0] = np.abs(u[..., 0])
    eps = rng.permutation(keys)[None, None, :, None] * spread / keys
    # The keys surround the first row's query; the other rows' queries move by far less than
    # the gaps, so float32 still orders every row's keys as float64 does.
    k = (q[:1, :, None] + (1 + eps) * u[:1])[0]
    qs = q[:1] + spread * 1e-3 * rng.normal(size=(batch, codebooks, dim))
    return (jnp.asarray(qs, jnp.float32), jnp.asarray(k, jnp.float32))


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("top_k", [1, 2, 5])
@pytest.mark.parametrize("candidates", [None, 5, 29, 30])
def test_rerank_equals_dense(integer, top_k, candidates):
    q, k, mask = problem(0, batch=11, codebooks=4, keys=30, dim=3, mask_p=0.3, integer=integer)
    candidates = None if candidates is None else max(candidates, top_k)
    assert_same_lookup(rerank(q, k, mask, top_k, candidates), dense(q, k, mask, top_k))


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("offset", [0.0, 30.0])
# 1e-3: a few pairs fall back one by one; 1e-4 with 2 candidates: every pair of the chunk is in
# doubt, more than the per-pair fallback holds, so the whole chunk is searched densely.
@pytest.mark.parametrize(("spread", "candidates"), [(1e-3, 4), (1e-4, 3)])
def test_near_ties_reach_the_exact_fallback(top_k, offset, spread, candidates):
    q, k = near_ties(1, batch=6, codebooks=3, keys=40, dim=4, offset=offset, spread=spread)
    candidates = max(candidates, top_k)
    assert not certified(q, k, None, top_k, candidates).all()  # the test is adversarial
    res = rerank(q, k, None, top_k, candidates)
    assert_matches_reference(res, q, k, None, top_k)
    if offset == 0:  # away from the origin the matmul form of `dense` cancels; rerank does not
        assert_same_lookup(res, dense(q, k, None, top_k))


@pytest.mark.parametrize("top_k", [1, 2])
def test_few_doubtful_pairs_are_searched_alone(top_k):
    # Codebook 0 holds near-ties bfloat16 cannot order, so its `top_k` candidates are the wrong
    # keys; the other codebooks' keys are well separated. The doubtful pairs fit the per-pair
    # fallback (at most 8 of these 16), so only it can repair codebook 0.
    tq, tk = near_ties(3, batch=4, codebooks=1, keys=40, dim=4, offset=0.0, spread=1e-4)
    q, k, _ = problem(4, batch=4, codebooks=3, keys=40, dim=4, mask_p=0.0, integer=False)
    q, k = jnp.concatenate([tq, q], axis=1), jnp.concatenate([tk, k], axis=0)
    doubtful = ~certified(q, k, None, top_k, top_k)
    assert 0 < doubtful.sum() <= 8 and doubtful[:, 0].all()
    res = rerank(q, k, None, top_k, top_k)
    assert_matches_reference(res, q, k, None, top_k)
    assert_same_lookup(res, dense(q, k, None, top_k))


def test_well_separated_keys_need_no_fallback():
    q, k, _ = problem(2, batch=16, codebooks=4, keys=64, dim=6, mask_p=0.0, integer=False)
    assert certified(q, k, None, 1, 16).mean() > 0.9


@pytest.mark.parametrize("top_k", [1, 3])
def test_duplicate_keys_break_ties_to_lower_index(top_k):
    q, k, _ = problem(1, batch=9, codebooks=3, keys=24, dim=4, mask_p=0.0, integer=False)
    k = jnp.concatenate([k[:, :8]] * 3, axis=1)
    res = rerank(q, k, None, top_k, candidates=top_k + 1)
    assert_same_lookup(res, dense(q, k, None, top_k))
    assert int(jnp.max(res.indices[..., 0])) < 8


@pytest.mark.parametrize("chunk", [None, 1, 4, 100])
def test_chunking_is_invisible(chunk):
    q, k, mask = problem(3, batch=13, codebooks=3, keys=32, dim=5, mask_p=0.2, integer=True)
    assert_same_lookup(rerank(q, k, mask, 2, chunk=chunk), dense(q, k, mask, 2))


def test_all_masked_and_short_codebooks():
    q, k, mask = problem(2, batch=6, codebooks=4, keys=16, dim=3, mask_p=0.0, integer=False)
    mask = mask.at[1].set(True).at[2, 1:].set(True)
    res = rerank(q, k, mask, 2, candidates=4)
    assert_same_lookup(res, dense(q, k, mask, 2))
    assert not bool(res.valid[:, 1].any())


class RerankVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        q, k, mask = problem(5, batch=7, codebooks=3, keys=20, dim=3, mask_p=0.3, integer=True)
        fn = self.variant(
            lambda q, k, m: lookup.nearest_keys(q, k, m, top_k=2, method="rerank", candidates=3)
        )
        assert_same_lookup(fn(q, k, mask), dense(q, k, mask, 2))


def test_vmap_over_masks_matches_loop():
    q, k, _ = problem(2, batch=8, codebooks=3, keys=20, dim=3, mask_p=0.0, integer=False)
    masks = jnp.asarray(np.random.default_rng(0).random((4, *k.shape[:2])) < 0.5)
    batched = jax.jit(jax.vmap(lambda m: rerank(q, k, m, 1, candidates=2).indices))(masks)
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(batched[i], dense(q, k, m, 1).indices)


_rerank_jit = jax.jit(lambda q, k, m: rerank(q, k, m, 3, candidates=4))
_dense_jit = functools.partial(dense, top_k=3)


# Fixed shapes (one compilation) and examples (derandomised: float64 and float32 could order a
# rare random near-tie differently); the data, masks, offsets and ties vary.
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    mask_p=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    integer=st.booleans(),
    offset=st.sampled_from([0.0, 100.0]),
)
def test_rerank_property(seed, mask_p, integer, offset):
    q, k, mask = problem(seed, 6, 3, 43, 3, mask_p, integer)
    q, k = q + offset, k + offset
    res = _rerank_jit(q, k, mask)
    assert_matches_reference(res, q, k, mask, 3)
    if offset == 0 or integer:  # integers stay exact in the matmul form too
        assert_same_lookup(res, _dense_jit(q, k, mask))


@pytest.mark.parametrize(
    ("backend", "expected"), [("gpu", "rerank"), ("tpu", "rerank"), ("cpu", "blocked")]
)
def test_auto_picks_the_search_per_backend(backend, expected):
    assert lookup.resolve_method("auto", 4096, 32, backend=backend) == expected
    assert lookup.resolve_method("dense", 4096, 32, backend=backend) == "dense"


def test_auto_follows_jax_default_backend(monkeypatch):
    calls = []
    real = rerank_lib.search_rows
    monkeypatch.setattr(rerank_lib, "search_rows", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q, k, mask = problem(4, batch=5, codebooks=2, keys=256, dim=3, mask_p=0.1, integer=False)
    res = jax.jit(lambda q, k, m: lookup.nearest_keys(q, k, m, top_k=1))(q, k, mask)
    assert calls
    assert_same_lookup(res, dense(q, k, mask, 1))


def test_model_config_accepts_every_method():
    assert LOOKUP_METHODS == lookup.METHODS
    cfg = dict(embed_dim=12, num_classes=3, num_codebooks=4, num_keys=32, key_dim=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(9, 12)), jnp.float32)
    codes = {}
    for method in ("dense", "rerank"):
        model = DKVB(DKVBConfig(**cfg, lookup_method=method))
        variables = model.init(jax.random.key(0), x)
        codes[method] = np.asarray(
            jax.jit(functools.partial(model.apply, method=DKVB.codes))(variables, x)[0]
        )
    np.testing.assert_array_equal(codes["rerank"], codes["dense"])


@pytest.mark.parametrize("candidates", [0, 1, 2.0, True])
def test_bad_candidates_raise(candidates):
    q, k, _ = problem(6, batch=2, codebooks=2, keys=8, dim=2, mask_p=0.0, integer=False)
    with pytest.raises(ValueError, match="candidates must be"):
        lookup.nearest_keys(q, k, top_k=2, method="rerank", candidates=candidates)
