"""Encoder registry: names, user modules/functions, batched `embed`, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from encoders_testutil import RESNET_TH, needs_shared

from dkvb_jax.encoders import cifar_resnet as cr
from dkvb_jax.encoders import registry


class TinyEncoder(nn.Module):
    features: int = 5

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features)(x.mean(axis=(1, 2)))


@pytest.fixture
def tiny():
    module = TinyEncoder()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return module, variables


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))


def test_builtin_names_and_unknown_name():
    assert {"mobilenet_v1", "cifar_resnet20", "cifar_resnet56"} <= set(registry.list_encoders())
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet_9000'.*mobilenet_v1"):
        registry.get_encoder("resnet_9000")
    with pytest.raises(TypeError, match="encoder_from_module"):
        registry.get_encoder(42)


@pytest.mark.parametrize("n, batch_size", [(7, 3), (7, 7), (7, 100), (1, 4), (0, 4)])
def test_embed_batches_match_one_call(tiny, n, batch_size):
    module, variables = tiny
    enc = registry.encoder_from_module(module, variables, name="tiny", input_size=8)
    images = np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    got = enc.embed(images, batch_size=batch_size)
    want = module.apply(variables, images.astype(np.float32) / 255.0) if n else np.zeros((0, 5))
    assert got.shape == (n, 5) and got.dtype == np.float32 and enc.embed_dim == 5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_user_module_resizes_and_custom_preprocess(tiny):
    module, variables = tiny
    enc = registry.encoder_from_module(module, variables, name="tiny", input_size=8)
    big = np.full((2, 16, 16, 3), 255, np.uint8)
    np.testing.assert_allclose(
        enc.embed(big), module.apply(variables, np.ones((2, 8, 8, 3))), rtol=1e-5
    )
    enc2 = registry.encoder_from_module(
        module, variables, name="tiny2", preprocess=lambda x: jnp.asarray(x, jnp.float32) * 0
    )
    np.testing.assert_allclose(
        enc2.embed(big), module.apply(variables, np.zeros((2, 16, 16, 3))), rtol=1e-5
    )


def test_user_function():
    enc = registry.encoder_from_function(
        lambda x: x.mean(axis=(1, 2)), name="mean_rgb", input_size=4
    )
    assert enc.embed_dim == 3 and enc.variables is None
    images = np.zeros((3, 4, 4, 3), np.uint8)
    images[..., 1] = 255
    np.testing.assert_allclose(enc.embed(images), [[0, 1, 0]] * 3)
    np.testing.assert_allclose(jax.jit(enc.__call__)(images), [[0, 1, 0]] * 3)


def test_register_and_get(clean_registry, tiny):
    module, variables = tiny
    registry.register_encoder(
        "tiny",
        lambda features=5: registry.encoder_from_module(
            TinyEncoder(features),
            TinyEncoder(features).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))),
            name="tiny",
            input_size=8,
            preprocess=lambda x: jnp.asarray(x, jnp.float32),
        ),
    )
    enc = registry.get_encoder("tiny", features=4)
    assert enc.name == "tiny" and enc.embed_dim == 4 and enc.input_size == 8
    assert enc.embed(np.zeros((2, 8, 8, 3), np.uint8)).shape == (2, 4)
    assert registry.get_encoder(enc) is enc
    with pytest.raises(ValueError, match="already registered"):
        registry.register_encoder("tiny", lambda: None)
    registry.register_encoder("tiny", lambda: "junk", overwrite=True)
    with pytest.raises(TypeError, match="returned str"):
        registry.get_encoder("tiny")
    # One way to register: a factory returns an Encoder, not the parts of one.
    registry.register_encoder("tiny", lambda: (module, variables, None, 5, 8), overwrite=True)
    with pytest.raises(TypeError, match="returned tuple; expected an Encoder"):
        registry.get_encoder("tiny")
    with pytest.raises(TypeError, match="factory"):
        registry.register_encoder("x", 3)


@pytest.mark.parametrize(
    "images, error, match",
    [
        (np.zeros((8, 8, 3), np.uint8), ValueError, "rank 4"),
        (np.zeros((2, 8, 8, 4), np.uint8), ValueError, "3 RGB channels"),
        (np.zeros((2, 8, 8, 3), np.str_), TypeError, "dtype"),
        ("not an image", TypeError, "array"),
    ],
)
def test_embed_bad_images(tiny, images, error, match):
    enc = registry.encoder_from_module(*tiny, name="tiny", input_size=8)
    with pytest.raises(error, match=match):
        enc.embed(images)


def test_bad_encoder_fields(tiny):
    module, variables = tiny
    with pytest.raises(ValueError, match="embed_dim"):
        registry.Encoder("x", 8, 0, lambda x: x, lambda v, x: x)
    with pytest.raises(TypeError, match="preprocess"):
        registry.Encoder("x", 8, 3, None, lambda v, x: x)
    with pytest.raises(ValueError, match="batch_size"):
        registry.encoder_from_module(module, variables, name="t", input_size=8).embed(
            np.zeros((1, 8, 8, 3), np.uint8), batch_size=0
        )
    with pytest.raises(ValueError, match=r"\[batch, embed_dim\]"):
        registry.encoder_from_function(lambda x: x, name="identity", input_size=4)
    wrong = registry.encoder_from_module(module, variables, name="t", input_size=8, embed_dim=9)
    with pytest.raises(ValueError, match="check embed_dim"):
        wrong.embed(np.zeros((1, 8, 8, 3), np.uint8))


def test_cifar_resnet20_encoder_matches_module(cifar_samples):
    _, images, _ = cifar_samples
    enc = registry.get_encoder("cifar_resnet20")
    module, variables = cr.load_cifar_resnet(20)
    assert (enc.input_size, enc.embed_dim) == (32, 64)
    np.testing.assert_allclose(
        enc.embed(images[:6], batch_size=4),
        module.apply(variables, cr.preprocess(images[:6])),
        rtol=1e-4,
        atol=1e-5,
    )


def test_cifar_resnet56_needs_path():
    with pytest.raises(ValueError, match="needs its weights file.*path="):
        registry.get_encoder("cifar_resnet56")


@needs_shared(RESNET_TH[56])
def test_cifar_resnet56_from_path():
    enc = registry.get_encoder("cifar_resnet56", path=RESNET_TH[56])
    assert enc.embed(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 64)


def test_mobilenet_v1_is_default():
    enc = registry.get_encoder()
    assert (enc.name, enc.input_size, enc.embed_dim) == ("mobilenet_v1", 224, 1024)
    assert "x - 128" in enc.description


def test_throughput_measure_runs():
    from dkvb_jax.encoders import throughput

    enc = registry.encoder_from_function(lambda x: x.mean(axis=(1, 2)), name="m", input_size=4)
    wall, cpu = throughput.measure(enc, np.zeros((6, 4, 4, 3), np.uint8), batch_size=4)
    assert wall > 0 and cpu > 0
