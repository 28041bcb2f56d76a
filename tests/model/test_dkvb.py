"""The Flax module: variable layout, decoders, masks, gradients and input validation."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax import DKVB, DKVBConfig

SMALL = DKVBConfig(embed_dim=24, num_classes=4, num_codebooks=6, num_keys=10, key_dim=3)


def make(cfg=SMALL, batch=7, seed=0):
    model = DKVB(cfg)
    x = jax.random.normal(jax.random.key(seed), (batch, cfg.embed_dim))
    return model, model.init(jax.random.key(1), x), x


def with_random_values(variables, seed=2):
    v = variables["params"]["values"]
    values = jax.random.normal(jax.random.key(seed), v.shape)
    return {**variables, "params": {**variables["params"], "values": values}}


@pytest.mark.parametrize(
    "changes, params",
    [
        ({}, {"values"}),
        ({"decoder": "linear"}, {"values", "decoder"}),
        ({"decoder": "mlp", "mlp_hidden": 8}, {"values", "decoder"}),
        ({"splitter": "learned"}, {"values", "splitter"}),
        ({"splitter": "chunk", "key_dim": 4}, {"values"}),
    ],
)
def test_variable_layout(changes, params):
    cfg = SMALL.replace(**changes)
    model, variables, x = make(cfg)
    assert set(variables["params"]) == params
    assert variables["frozen"]["keys"].shape == (6, 10, cfg.key_dim)
    assert ("projection" in variables["frozen"]) == (cfg.splitter == "random_projection")
    for name in ("search", "readout"):
        chex.assert_shape(variables["mask"][name], (6, 10))
        assert variables["mask"][name].dtype == jnp.bool_ and not variables["mask"][name].any()
    np.testing.assert_array_equal(variables["params"]["values"], 0.0)
    chex.assert_shape(model.apply(variables, x), (7, 4))


def test_projection_has_unit_norm_columns():
    _, variables, _ = make()
    norms = jnp.linalg.norm(variables["frozen"]["projection"], axis=0)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_vote_is_mean_of_retrieved_values():
    model, variables, x = make(SMALL.replace(top_k=2))
    variables = with_random_values(variables)
    idx, valid = model.apply(variables, x, method=DKVB.codes)
    vals = np.asarray(variables["params"]["values"])
    expected = np.stack(
        [vals[np.arange(6)[:, None], np.asarray(idx)[b]].mean(axis=(0, 1)) for b in range(7)]
    )
    np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


def test_readout_mask_zeroes_value_but_keeps_key():
    model, variables, x = make()
    variables = with_random_values(variables)
    idx, _ = model.apply(variables, x, method=DKVB.codes)
    readout = jnp.zeros((6, 10), bool).at[jnp.arange(6), idx[0, :, 0]].set(True)
    masked = {**variables, "mask": {**variables["mask"], "readout": readout}}
    # Codes are unchanged, but example 0's retrieved values all read as zero.
    np.testing.assert_array_equal(model.apply(masked, x, method=DKVB.codes)[0], idx)
    np.testing.assert_allclose(model.apply(masked, x)[0], 0.0)


@pytest.mark.parametrize("decoder", ["vote", "linear"])
def test_all_masked_codebook_contributes_nothing(decoder):
    model, variables, x = make(SMALL.replace(decoder=decoder))
    variables = with_random_values(variables)
    search = variables["mask"]["search"].at[2].set(True)
    masked = {**variables, "mask": {**variables["mask"], "search": search}}
    logits = model.apply(masked, x)
    assert jnp.isfinite(logits).all()
    values, present = model.apply(
        masked, *model.apply(masked, x, method=DKVB.codes), method=DKVB.retrieve
    )
    assert not present[:, 2].any() and present[:, [0, 1, 3, 4, 5]].all()
    np.testing.assert_array_equal(values[:, 2], 0.0)
    # All codebooks masked: logits are zeros, never NaN.
    everything = {**variables, "mask": {**variables["mask"], "search": jnp.ones((6, 10), bool)}}
    out = model.apply(everything, x)
    if decoder == "vote":
        np.testing.assert_array_equal(out, 0.0)
    assert jnp.isfinite(out).all()


def test_token_inputs_average_retrieved_values():
    model, variables, x = make()
    variables = with_random_values(variables)
    # One token per example is the pooled case; repeated tokens give the same result.
    np.testing.assert_allclose(
        model.apply(variables, x[:, None]), model.apply(variables, x), rtol=1e-6
    )
    np.testing.assert_allclose(
        model.apply(variables, jnp.stack([x, x], 1)), model.apply(variables, x), rtol=1e-6
    )
    two = jnp.stack([x, x[::-1]], axis=1)
    assert model.apply(variables, two).shape == (7, 4)


@pytest.mark.parametrize("changes", [{}, {"decoder": "linear"}, {"splitter": "learned"}])
def test_gradients_flow_only_into_params(changes):
    model, variables, x = make(SMALL.replace(**changes))
    variables = with_random_values(variables)
    y = jnp.arange(7) % 4

    def loss(frozen, params):
        logits = model.apply({**variables, "frozen": frozen, "params": params}, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(7), y])

    g_frozen, g_params = jax.grad(loss, argnums=(0, 1))(variables["frozen"], variables["params"])
    for leaf in jax.tree.leaves(g_frozen):
        np.testing.assert_array_equal(leaf, 0.0)
    # The retrieved values get gradient; never-retrieved values get none.
    g_values = np.asarray(g_params["values"])
    idx, _ = model.apply(variables, x, method=DKVB.codes)
    used = np.zeros((6, 10), bool)
    used[np.arange(6)[None, :], np.asarray(idx)[..., 0]] = True
    assert np.abs(g_values[used]).sum() > 0
    np.testing.assert_array_equal(g_values[~used], 0.0)


@pytest.mark.parametrize("jit", [False, True])
def test_jit_matches_eager(jit):
    model, variables, x = make()
    variables = with_random_values(variables)
    apply = jax.jit(model.apply) if jit else model.apply
    chex.assert_trees_all_close(apply(variables, x), model.apply(variables, x), rtol=1e-6)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (np.zeros((3, 5), np.float32), ValueError, "embed_dim=24"),
        (np.zeros((24,), np.float32), ValueError, "shape"),
        (np.zeros((2, 3, 4, 24), np.float32), ValueError, "shape"),
        (np.zeros((3, 24), np.int32), TypeError, "floating point"),
        (np.full((3, 24), np.nan, np.float32), ValueError, "NaN or inf"),
        (np.zeros((0, 24), np.float32), ValueError, "empty"),
        ([[0.0] * 24], TypeError, "array"),
    ],
)
def test_bad_embeddings(x, error, match):
    model, variables, _ = make()
    with pytest.raises(error, match=match):
        model.apply(variables, x)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"num_codebooks": 0}, "num_codebooks"),
        ({"num_keys": 2.5}, "num_keys"),
        ({"top_k": 11}, "top_k"),
        ({"splitter": "pca"}, "splitter"),
        ({"decoder": "attention"}, "decoder"),
        ({"value_dim": 7}, "value_dim"),
        ({"splitter": "chunk"}, "key_dim"),
        ({"lookup_chunk": -3}, "lookup_chunk"),
        ({"lookup_memory_mb": 0}, "lookup_memory_mb"),
        ({"lookup_method": "faiss"}, "lookup_method"),
    ],
)
def test_config_validation_names_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        SMALL.replace(**changes)


def test_config_round_trips_through_dict():
    cfg = SMALL.replace(decoder="linear", value_dim=5)
    assert DKVBConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown DKVBConfig fields"):
        DKVBConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_keys = 3  # type: ignore[misc]


def test_paper_defaults():
    cfg = DKVBConfig(embed_dim=512, num_classes=10)
    assert (cfg.num_codebooks, cfg.num_keys, cfg.key_dim, cfg.top_k) == (256, 4096, 14, 1)
    assert (cfg.splitter, cfg.decoder) == ("random_projection", "vote")
