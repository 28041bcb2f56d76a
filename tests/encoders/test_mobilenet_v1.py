"""MobileNetV1: Flax port vs the TFLite interpreter, TF 'SAME' padding, converter and bad input."""

import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from encoders_testutil import TFLITE, cosine, needs_shared

from dkvb_jax.encoders import _images, _weights
from dkvb_jax.encoders import mobilenet_v1 as mb

HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="needs the optional ai-edge-litert")

# Measured on the 20 shipped images, port vs interpreter on the same uint8 224 inputs: float
# activations min 0.8725 (a dark 'deer' image) and mean 0.9723; with activation rounding
# (emulate_quantization) min 0.9997, mean 0.9998. From the 32 px images (float resize, no
# rounding of the input): mean 0.9421. Thresholds leave a margin for JPEG decoder versions.
FLOAT_MIN_COS, FLOAT_MEAN_COS = 0.85, 0.96
EMULATED_MIN_COS = 0.999


@pytest.fixture(scope="module")
def reference(cifar_samples):
    """Interpreter embeddings of the shipped images, aligned with `cifar_samples`."""
    names, images, _ = cifar_samples
    ref = _weights.load_npz(_weights.asset_path("mobilenet_v1_reference.npz"), what="reference")
    order = [list(ref["names"]).index(n) for n in names]
    emb = (ref["embedding_uint8"][order].astype(np.float32) - ref["zero_point"]) * ref["scale"]
    # The interpreter takes uint8 at 224: the same bilinear resize, rounded.
    x224 = np.asarray(
        jnp.clip(jnp.round(_images.resize_to(_images.as_float(images), 224)), 0, 255)
    ).astype(np.uint8)
    return x224, emb


@pytest.fixture(scope="module")
def port_embeddings(cifar_samples, reference):
    """Flax embeddings (one compilation each): float and emulated on the 224 inputs, float on 32px."""
    _, images, _ = cifar_samples
    x224, _ = reference
    out = {}
    for emulate in (False, True):
        module, variables = mb.load_mobilenet_v1(emulate_quantization=emulate)
        out[emulate] = np.asarray(jax.jit(module.apply)(variables, mb.preprocess(x224)))
    out["32px"] = np.asarray(
        jax.jit(lambda v, x: module.apply(v, mb.preprocess(x)))(mb.load_mobilenet_v1()[1], images)
    )
    return out


@pytest.mark.parametrize(
    "emulate, min_cos, mean_cos",
    [
        (False, FLOAT_MIN_COS, FLOAT_MEAN_COS),
        (True, EMULATED_MIN_COS, EMULATED_MIN_COS),
    ],
)
def test_matches_stored_interpreter_embedding(
    reference, port_embeddings, emulate, min_cos, mean_cos
):
    got = port_embeddings[emulate]
    cos = cosine(got, reference[1])
    assert got.shape == (len(reference[0]), mb.EMBED_DIM) and got.dtype == np.float32
    assert cos.min() >= min_cos and cos.mean() >= mean_cos, cos


def test_embedding_from_32px_uint8_close_to_interpreter(reference, port_embeddings):
    """The default path (float resize inside preprocess, no rounding) stays close too."""
    assert cosine(port_embeddings["32px"], reference[1]).mean() >= 0.92


def test_emulated_module_uses_scale_from_weights():
    module, _ = mb.load_mobilenet_v1(emulate_quantization=True)
    assert module.activation_scale == pytest.approx(6 / 255, rel=1e-3)
    assert mb.load_mobilenet_v1()[0].activation_scale is None


@needs_litert
@needs_shared(TFLITE)
def test_matches_live_interpreter(reference, port_embeddings):
    from dkvb_jax.encoders import tflite_convert

    x224, stored = reference
    live = tflite_convert.interpreter_embeddings(TFLITE, x224)
    scale, zp = tflite_convert.output_quantization(TFLITE)
    live = (live.astype(np.float32) - zp) * scale
    # The stored fixture is this interpreter's output; allow one quantisation step of drift.
    np.testing.assert_allclose(live, stored, atol=scale * 1.01)
    assert cosine(port_embeddings[True], live).min() > EMULATED_MIN_COS


def _tf_same_conv(x, w, stride, depthwise=False):
    """Brute-force NumPy conv with TensorFlow 'SAME' padding: x [h, w, c], w [kh, kw, c or 1, o]."""
    h, k = x.shape[0], w.shape[0]
    out = -(-h // stride)
    total = max((out - 1) * stride + k - h, 0)
    before = total // 2  # TF puts the odd pixel after.
    xp = np.pad(x, ((before, total - before), (before, total - before), (0, 0)))
    y = np.zeros((out, out, w.shape[-1]), np.float64)
    for i in range(out):
        for j in range(out):
            patch = xp[i * stride : i * stride + k, j * stride : j * stride + k]
            y[i, j] = (
                np.einsum("hwc,hwc->c", patch, w[:, :, 0])
                if depthwise
                else np.einsum("hwc,hwco->o", patch, w)
            )
    return y


@pytest.mark.parametrize("size", [7, 8, 9])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layer", ["conv", "depthwise", "grouped"])
def test_conv_padding_is_tensorflow_same(size, stride, layer):
    """Includes the asymmetric stride-2 case (even input: pad 0 before, 1 after).

    'depthwise' is the port's `DepthwiseConv`; 'grouped' is the equivalent `feature_group_count`
    convolution it replaces.
    """
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.normal(size=(1, size, size, 4)).astype(np.float32)
    w = rng.normal(size=(3, 3, 1 if layer != "conv" else 4, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    conv = {
        "conv": nn.Conv(4, (3, 3), strides=stride, padding="SAME"),
        "grouped": nn.Conv(4, (3, 3), strides=stride, padding="SAME", feature_group_count=4),
        "depthwise": mb.DepthwiseConv(strides=stride),
    }[layer]
    got = conv.apply({"params": {"kernel": w, "bias": b}}, x)[0]
    want = _tf_same_conv(x[0], w, stride, depthwise=layer != "conv") + b
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "size, kernel, stride, pads",
    [(224, 3, 2, (0, 1)), (112, 3, 1, (1, 1)), (7, 3, 2, (1, 1)), (4, 1, 1, (0, 0))],
)
def test_tf_same_pads(size, kernel, stride, pads):
    assert mb.tf_same_pads(size, kernel, stride) == pads


def test_shipped_weights_tree_and_dequantisation():
    flat = _weights.load_npz(_weights.asset_path(mb.WEIGHTS_FILE), what="weights")
    _, variables = mb.load_mobilenet_v1()
    params = variables["params"]
    assert sorted(params) == sorted(mb.layer_names()) and len(params) == 27
    assert (
        sum(x.size for x in jax.tree.leaves(params)) == 3_196_032
    )  # 3,185,088 conv weights + 10,944 folded biases
    name = "Conv2d_5_depthwise"
    want = (flat[f"{name}/kernel"].astype(np.float32) - flat[f"{name}/kernel_zero_point"]) * flat[
        f"{name}/kernel_scale"
    ]
    np.testing.assert_allclose(params[name]["kernel"], want, rtol=1e-6)
    assert params[name]["kernel"].shape == (3, 3, 1, 256)


@needs_litert
@needs_shared(TFLITE)
def test_converter_round_trip(tmp_path):
    from dkvb_jax.encoders import tflite_convert

    out = tflite_convert.convert_mobilenet_v1(TFLITE, tmp_path / "w.npz")
    shipped = _weights.load_npz(_weights.asset_path(mb.WEIGHTS_FILE), what="shipped")
    fresh = _weights.load_npz(out, what="fresh")
    assert sorted(fresh) == sorted(shipped)
    for k in shipped:
        np.testing.assert_array_equal(fresh[k], shipped[k], err_msg=k)
    _, from_tflite = mb.load_mobilenet_v1(TFLITE)
    _, from_npz = mb.load_mobilenet_v1(out)
    jax.tree.map(np.testing.assert_array_equal, from_tflite, from_npz)


@pytest.mark.parametrize(
    "shape, error, match",
    [
        ((32, 32, 3), ValueError, "rank 4"),
        ((2, 32, 32, 1), ValueError, "3 RGB channels"),
        ((2, 32, 32, 4), ValueError, "3 RGB channels"),
        ((2, 3, 32, 32), ValueError, "3 RGB channels"),
    ],
)
def test_bad_images(shape, error, match):
    with pytest.raises(error, match=match):
        mb.preprocess(np.zeros(shape, np.uint8))


def test_bad_image_dtype_and_type():
    with pytest.raises(TypeError, match="dtype"):
        mb.preprocess(np.zeros((1, 8, 8, 3), np.complex64))
    with pytest.raises(TypeError, match="array"):
        mb.preprocess([[1, 2, 3]])


def test_missing_and_truncated_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        mb.load_mobilenet_v1(tmp_path / "absent.npz")
    data = _weights.asset_path(mb.WEIGHTS_FILE).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        mb.load_mobilenet_v1(cut)


def _shipped_flat():
    return _weights.load_npz(_weights.asset_path(mb.WEIGHTS_FILE), what="shipped")


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda f: f.pop("Conv2d_7_pointwise/kernel"), "missing array 'Conv2d_7_pointwise/kernel'"),
        (lambda f: f.update({"Conv2d_0/kernel": f["Conv2d_0/kernel"][..., :16]}), "wrong shape"),
        (lambda f: f.update({"__format__": np.array("something else")}), "expected format"),
        (lambda f: f.pop("activation_scale"), "activation_scale"),
    ],
)
def test_wrong_weights_tree(tmp_path, corrupt, match):
    flat = _shipped_flat()
    corrupt(flat)
    path = tmp_path / "bad.npz"
    np.savez(path, **flat)
    with pytest.raises(ValueError, match=match):
        mb.load_mobilenet_v1(path)


def test_not_a_dict():
    with pytest.raises(TypeError, match="dict of arrays"):
        mb.dequantize([1, 2])


@needs_litert
@needs_shared(TFLITE)
def test_truncated_tflite(tmp_path):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(TFLITE.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="not a readable TFLite model"):
        mb.read_tflite(cut)
    with pytest.raises(FileNotFoundError):
        mb.read_tflite(tmp_path / "absent.tflite")
