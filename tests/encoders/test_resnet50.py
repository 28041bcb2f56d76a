"""ResNet (torchvision layout): converter one-to-one, Flax forward vs NumPy and torchvision."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_subprocess import run_torch
from torch_zip_writer import save_torch_zip

from dkvb_jax.encoders import resnet50 as rn
from dkvb_jax.encoders import state_dict as sd
from dkvb_jax.encoders._center_crop import IMAGENET_MEAN, IMAGENET_STD, make_preprocess

TINY = rn.ResNetConfig(stage_sizes=(2, 1), width=4, num_classes=5, image_size=32)


def torchvision_state_dict(config: rn.ResNetConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under torchvision's ResNet names and shapes, written from its source layout."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out_ch, in_ch, k):
        state[f"{name}.weight"] = rng.normal(
            0, (2 / (in_ch * k * k)) ** 0.5, (out_ch, in_ch, k, k)
        ).astype(np.float32)

    def bn(name, ch):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, ch).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, ch).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, ch).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, ch).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

    conv("conv1", config.width, 3, 7)
    bn("bn1", config.width)
    inplanes = config.width
    for s, blocks in enumerate(config.stage_sizes):
        planes = config.width * 2**s
        for b in range(blocks):
            p = f"layer{s + 1}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if b == 0:  # stride 2 or a channel change: torchvision's `downsample`
                (
                    conv(f"{p}.downsample.0", planes * 4, inplanes, 1),
                    bn(f"{p}.downsample.1", planes * 4),
                )
            inplanes = planes * 4
    if config.num_classes:
        state["fc.weight"] = rng.normal(0, inplanes**-0.5, (config.num_classes, inplanes)).astype(
            np.float32
        )
        state["fc.bias"] = rng.normal(0, 0.1, config.num_classes).astype(np.float32)
    return state


# ---- NumPy reference forward (float64, NHWC, torch weight layouts) --------------------------


def np_conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    _, _, kh, kw = w.shape
    h = (x.shape[1] - kh) // stride + 1
    wd = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, wd, w.shape[0]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * h : stride, j : j + stride * wd : stride, :]
            out += patch @ w[:, :, i, j].T
    return out


def np_bn(x, s, name):
    scale = s[f"{name}.weight"] / np.sqrt(s[f"{name}.running_var"] + 1e-5)
    return (x - s[f"{name}.running_mean"]) * scale + s[f"{name}.bias"]


def np_maxpool(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return np.max(
        [x[:, i : i + 2 * h : 2, j : j + 2 * w : 2] for i in range(3) for j in range(3)], axis=0
    )


def np_resnet(state, x, config):
    s = {k: v.astype(np.float64) for k, v in state.items()}
    relu = lambda v: np.maximum(v, 0)
    x = np_maxpool(relu(np_bn(np_conv(x.astype(np.float64), s["conv1.weight"], 2, 3), s, "bn1")))
    for si, blocks in enumerate(config.stage_sizes):
        for b in range(blocks):
            p = f"layer{si + 1}.{b}"
            stride = 2 if si > 0 and b == 0 else 1
            y = relu(np_bn(np_conv(x, s[f"{p}.conv1.weight"], 1, 0), s, f"{p}.bn1"))
            y = relu(np_bn(np_conv(y, s[f"{p}.conv2.weight"], stride, 1), s, f"{p}.bn2"))
            y = np_bn(np_conv(y, s[f"{p}.conv3.weight"], 1, 0), s, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in s:
                x = np_bn(
                    np_conv(x, s[f"{p}.downsample.0.weight"], stride, 0), s, f"{p}.downsample.1"
                )
            x = relu(y + x)
    emb = x.mean(axis=(1, 2))
    return emb, emb @ s["fc.weight"].T + s["fc.bias"]


def assert_close(got, ref):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---- tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same tiny torchvision-layout state dict as .pt and as .safetensors."""
    from safetensors.numpy import save_file

    state = torchvision_state_dict(TINY)
    root = tmp_path_factory.mktemp("resnet")
    save_torch_zip(state, root / "tiny.pt")
    save_file(state, str(root / "tiny.safetensors"))
    return state, {"pt": root / "tiny.pt", "safetensors": root / "tiny.safetensors"}


@pytest.fixture(scope="module")
def images():
    # Odd, non-square sizes exercise torch's floor arithmetic in strided convs and pooling.
    return np.random.default_rng(1).normal(size=(2, 29, 35, 3)).astype(np.float32)


@jax.jit
def embed_and_logits(variables, images):
    module = rn.ResNet(TINY)
    return module.apply(variables, images), module.apply(variables, images, logits=True)


def test_both_formats_give_the_same_variables(checkpoints):
    a = rn.load_resnet(checkpoints[1]["pt"], TINY)[1]
    b = rn.load_resnet(checkpoints[1]["safetensors"], TINY)[1]
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_forward_matches_numpy_reference(checkpoints, images):
    state, paths = checkpoints
    _, variables = rn.load_resnet(paths["pt"], TINY)
    emb, logits = embed_and_logits(variables, images)
    ref_emb, ref_logits = np_resnet(state, images, TINY)
    assert emb.shape == (2, TINY.embed_dim) and logits.shape == (2, TINY.num_classes)
    assert_close(emb, ref_emb)
    assert_close(logits, ref_logits)


def test_forward_matches_torchvision_resnet50(tmp_path):
    """torchvision's own ResNet-50 (random weights, saved by torch.save) through the converter."""
    ref = run_torch("resnet50", tmp_path)
    module, variables = rn.load_resnet(tmp_path / "model.pt")
    images = jnp.asarray(ref["images"])
    emb = jax.jit(module.apply)(variables, images)
    logits = jax.jit(functools.partial(module.apply, logits=True))(variables, images)
    assert emb.shape == (2, 2048) and logits.shape == (2, 1000)
    assert_close(emb, ref["embedding"])
    assert_close(logits, ref["logits"])


def test_names_map_one_to_one(checkpoints):
    state, _ = checkpoints
    variables = rn.convert_resnet(state, TINY)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    consumed = {k for k in state if not k.endswith("num_batches_tracked")}
    assert len(leaves) == len(consumed)  # every Flax leaf filled from a distinct source key
    torch_keys = {sd.flax_leaf_to_torch_key(tuple(p.key for p in path))[0] for path, _ in leaves}
    assert torch_keys == consumed


def test_default_config_is_torchvision_resnet50():
    shapes = sd.init_shapes(rn.ResNet(rn.RESNET50), jnp.zeros((1, 224, 224, 3)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
    assert n_params == 25_557_032  # torchvision.models.resnet50().parameters()
    assert rn.RESNET50.embed_dim == 2048
    flat = {
        sd.flax_leaf_to_torch_key(tuple(p.key for p in path))[0]: sd.flax_leaf_to_torch_key(
            tuple(p.key for p in path)
        )[2](x.shape)
        for path, x in jax.tree_util.tree_leaves_with_path(shapes)
    }
    assert len(flat) + 53 == 320  # torchvision's 320 keys include 53 num_batches_tracked
    assert flat["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert flat["layer3.0.downsample.0.weight"] == (1024, 512, 1, 1)
    assert flat["fc.weight"] == (1000, 2048)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("layer1.1.bn2.running_var"), r"missing \(1\): layer1.1.bn2.running_var"),
        (
            lambda s: s.update({"layer3.0.conv1.weight": np.zeros((4, 4, 1, 1), np.float32)}),
            r"unexpected \(1\): layer3.0.conv1.weight",
        ),
        (
            lambda s: s.update({"layer2.0.conv2.weight": np.zeros((8, 8, 5, 5), np.float32)}),
            r"layer2.0.conv2.weight: expected \(8, 8, 3, 3\), got \(8, 8, 5, 5\)",
        ),
    ],
)
def test_mismatched_state_dicts_name_the_keys(checkpoints, edit, match):
    state = dict(checkpoints[0])
    edit(state)
    with pytest.raises(sd.StateDictMismatchError, match=match):
        rn.convert_resnet(state, TINY)


def test_wrong_architecture_is_a_clear_error(checkpoints):
    with pytest.raises(sd.StateDictMismatchError, match=r"ResNet-50 .*\n.*missing \(\d+\)"):
        rn.resnet50_encoder(checkpoints[1]["pt"])  # a tiny checkpoint is not a ResNet-50


def test_truncated_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    data = checkpoints[1]["safetensors"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        rn.load_resnet(path, TINY)


def test_factory_returns_an_encoder(checkpoints):
    encoder = rn.resnet50_encoder(checkpoints[1]["pt"], config=TINY)
    assert encoder.name == "resnet50"
    assert encoder.input_size == TINY.image_size and encoder.embed_dim == TINY.embed_dim
    pixels = np.random.default_rng(2).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    x = encoder.preprocess(pixels)
    assert x.shape == (3, TINY.image_size, TINY.image_size, 3)
    z = jax.jit(encoder.apply_fn)(encoder.variables, x)
    assert z.shape == (3, TINY.embed_dim)
    np.testing.assert_array_equal(encoder.embed(pixels), np.asarray(z))


def test_registered_in_get_encoder(checkpoints):
    from dkvb_jax.encoders.registry import get_encoder

    with pytest.raises(ValueError, match="no shipped weights; pass path="):
        get_encoder("resnet50")
    encoder = get_encoder("resnet50", path=checkpoints[1]["pt"], config=TINY)
    pixels = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert encoder.embed(pixels, batch_size=2).shape == (3, TINY.embed_dim)


def test_headless_checkpoint_loads_and_refuses_logits(checkpoints, tmp_path):
    state = {k: v for k, v in checkpoints[0].items() if not k.startswith("fc.")}
    save_torch_zip(state, tmp_path / "headless.pt")
    encoder = rn.resnet50_encoder(tmp_path / "headless.pt", config=TINY)
    apply, variables, embed_dim = encoder.apply_fn, encoder.variables, encoder.embed_dim
    x = jnp.zeros((1, 32, 32, 3))
    assert "fc" not in variables["params"]
    assert jax.eval_shape(apply, variables, x).shape == (1, embed_dim)
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(lambda v: apply(v, x, logits=True), variables)


@pytest.mark.parametrize("shape", [(1, 40, 60, 3), (1, 300, 224, 3), (1, 224, 224, 3)])
def test_preprocess_resizes_crops_and_normalises(shape):
    preprocess = make_preprocess(224, IMAGENET_MEAN, IMAGENET_STD)
    mean_pixel = np.broadcast_to(np.array(IMAGENET_MEAN) * 255, shape).astype(np.float32)
    out = preprocess(mean_pixel)
    assert out.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(np.asarray(out), 0.0, atol=1e-5)


def test_preprocess_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        make_preprocess(224, IMAGENET_MEAN, IMAGENET_STD)(np.zeros((1, 32, 32, 1), np.uint8))


@pytest.mark.parametrize("field, value", [("stage_sizes", ()), ("width", 0), ("num_classes", -1)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"ResNetConfig.{field}"):
        dataclasses.replace(TINY, **{field: value})
