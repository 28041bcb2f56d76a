"""MobileNetV1 1.0 (ImageNet, 1024-d embedding) in Flax, with the shipped converted weights.

The weights come from the quantised TFLite embedding extractor in
`../shared/weights/mobilenet_v1/` (google-coral/test_data, Apache-2.0): batch norm is folded into
the convolutions, so every layer is a convolution with bias followed by ReLU6. They are shipped
in `dkvb_jax/assets/mobilenet_v1_1.0_224_quant.npz` as the original uint8 weights plus one
scale and zero point per tensor (2.3 MB) and dequantised on load; see
`dkvb_jax.encoders.tflite_convert` for the converter.

The port computes activations in float, so its embedding matches the quantised interpreter's up
to activation quantisation: cosine 0.97 on average (0.87 at worst) on 20 CIFAR-10 test images
resized to 224, and 0.9998 with `emulate_quantization=True`.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.encoders import _images, _tflite, _weights

INPUT_SIZE = 224
EMBED_DIM = 1024
WEIGHTS_FILE = "mobilenet_v1_1.0_224_quant.npz"
FORMAT = "dkvb_jax/mobilenet_v1_quant/v1"

# (pointwise filters, depthwise stride) of blocks Conv2d_1 ... Conv2d_13.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def layer_names() -> list[str]:
    """Names of the 27 convolution layers in network order (as in the TFLite graph)."""
    names = ["Conv2d_0"]
    for i in range(1, len(BLOCKS) + 1):
        names += [f"Conv2d_{i}_depthwise", f"Conv2d_{i}_pointwise"]
    return names


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after): the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
    """Depthwise convolution (one filter per channel) with TF "SAME" padding and bias.

    Same parameters and result as `nn.Conv(c, k, feature_group_count=c, padding='SAME')` (kernel
    `[kh, kw, 1, c]`), computed as a sum of `kh * kw` shifted, strided slices times per-channel
    weights: XLA:CPU runs grouped convolutions about 8x slower than this.
    """

    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (kh, kw), s, c = self.kernel_size, self.strides, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, 1, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        pads = [tf_same_pads(x.shape[a], k, s) for a, k in ((1, kh), (2, kw))]
        xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
        y = sum(
            xp[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s, :] * kernel[i, j, 0]
            for i in range(kh)
            for j in range(kw)
        )
        return y + bias


class MobileNetV1(nn.Module):
    """MobileNetV1 1.0 feature extractor with folded batch norm.

    Takes normalised images `[batch, 224, 224, 3]` (see `preprocess`) and returns the average-pooled
    embedding `[batch, 1024]`. Padding is TensorFlow "SAME", which for the stride-2 layers pads one
    pixel after and none before; `lax` 'SAME' uses the same rule (extra padding at the end).

    Attributes:
      activation_scale: None computes activations in float (the default, and what the embedding
        cache uses). A float emulates the uint8 interpreter by rounding the input to its 1/128 grid
        and every ReLU6 output and the pooled embedding to multiples of this scale (the TFLite
        model uses 6/255 throughout); the port then matches the interpreter to cosine > 0.999.
      dtype: computation dtype.
    """

    activation_scale: float | None = None
    dtype: Any = jnp.float32

    def _act(self, x: jax.Array) -> jax.Array:
        x = nn.relu6(x)
        if self.activation_scale is None:
            return x
        return jnp.round(x / self.activation_scale) * self.activation_scale

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.activation_scale is not None:
            x = jnp.clip(jnp.round(x * 128.0), -128.0, 127.0) / 128.0
        x = self._act(
            nn.Conv(32, (3, 3), strides=2, padding="SAME", dtype=self.dtype, name="Conv2d_0")(x)
        )
        for i, (filters, stride) in enumerate(BLOCKS, start=1):
            x = self._act(
                DepthwiseConv(strides=stride, dtype=self.dtype, name=f"Conv2d_{i}_depthwise")(x)
            )
            x = self._act(
                nn.Conv(filters, (1, 1), dtype=self.dtype, name=f"Conv2d_{i}_pointwise")(x)
            )
        x = jnp.mean(x, axis=(1, 2))
        if self.activation_scale is not None:
            x = jnp.round(x / self.activation_scale) * self.activation_scale
        return x.astype(jnp.float32)


def preprocess(images: Any) -> jax.Array:
    """uint8/float RGB images `[batch, h, w, 3]` in [0, 255] -> `[batch, 224, 224, 3]` in [-1, 1).

    Resizes bilinearly to 224 and maps x -> (x - 128) / 128, the TFLite input quantisation.
    """
    _images.check_images(images)
    x = _images.resize_to(_images.as_float(images), INPUT_SIZE)
    return (x - 128.0) / 128.0


def param_shapes() -> dict[str, Any]:
    """The expected `{'params': ...}` tree as `jax.ShapeDtypeStruct` leaves."""
    return jax.eval_shape(
        MobileNetV1().init,
        jax.random.key(0),
        jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )


def dequantize(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Quantised flat arrays (as written by the converter) -> Flax variables `{'params': ...}`.

    Kernel: (q - zero_point) * scale; bias: int32 q * bias_scale.
    """
    # 'activation_scale' is read by load_mobilenet_v1 and only checked for presence here.
    if not isinstance(flat, dict):
        raise TypeError(
            f"MobileNetV1 weights: expected a dict of arrays, got {type(flat).__name__}."
        )
    fmt = flat.get("__format__")
    if fmt is None or str(fmt) != FORMAT:
        raise ValueError(
            f"MobileNetV1 weights: expected format {FORMAT!r}, got "
            f"{None if fmt is None else str(fmt)!r}; this is not a file written by "
            "dkvb_jax.encoders.tflite_convert."
        )
    if "activation_scale" not in flat:
        raise ValueError("MobileNetV1 weights: missing array 'activation_scale'.")
    params = {}
    for name in layer_names():
        try:
            q, scale, zp = (
                flat[f"{name}/kernel"],
                flat[f"{name}/kernel_scale"],
                flat[f"{name}/kernel_zero_point"],
            )
            bias_q, bias_scale = flat[f"{name}/bias"], flat[f"{name}/bias_scale"]
        except KeyError as e:
            raise ValueError(
                f"MobileNetV1 weights: missing array {e.args[0]!r}; the file does not "
                "hold all 27 MobileNetV1 layers."
            ) from None
        kernel = (q.astype(np.float32) - np.float32(zp)) * np.float32(scale)
        params[name] = {
            "kernel": kernel.astype(np.float32),
            "bias": (bias_q.astype(np.float32) * np.float32(bias_scale)),
        }
    variables = {"params": params}
    _weights.check_tree_shapes(variables, param_shapes(), what="MobileNetV1 weights")
    return jax.tree.map(jnp.asarray, variables)


# Weight tensors are named e.g. 'MobilenetV1/MobilenetV1/Conv2d_3_depthwise/depthwise_Fold;...'
# and biases 'MobilenetV1/MobilenetV1/Conv2d_3_depthwise/BatchNorm_Fold/bias'.
_LAYER = r"^MobilenetV1/MobilenetV1/(Conv2d_\d+(?:_depthwise|_pointwise)?)/"
_KERNEL_RE = re.compile(_LAYER + r"[^;]*_Fold;.*weights_quant")
_BIAS_RE = re.compile(_LAYER + r"BatchNorm_Fold/bias$")


def read_tflite(tflite_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads the quantised weights of the MobileNetV1 TFLite model.

    Args:
      tflite_path: the `.tflite` embedding extractor (uint8 weights, int32 biases).

    Returns:
      Flat arrays for `dequantize`: per layer `{name}/kernel` uint8 in Flax layout
      `[kh, kw, in / groups, out]`, `{name}/kernel_scale`, `{name}/kernel_zero_point`,
      `{name}/bias` int32 `[out]` and `{name}/bias_scale`; the activation scale shared by all
      uint8 activations (`activation_scale`); and `__format__`.
    """
    path = pathlib.Path(tflite_path)
    interpreter = _tflite.interpreter(path)
    flat: dict[str, np.ndarray] = {"__format__": np.array(FORMAT)}
    details = interpreter.get_tensor_details()
    input_index = interpreter.get_input_details()[0]["index"]
    act_scales = {
        _tflite.scalar_quant(d)[0]
        for d in details
        if d["index"] != input_index and d["dtype"] == np.uint8 and "Relu6" in d["name"]
    }
    if len(act_scales) != 1:
        raise ValueError(
            f"tflite_path: expected one activation scale shared by all ReLU6 outputs, "
            f"got {sorted(act_scales)}."
        )
    flat["activation_scale"] = np.float32(act_scales.pop())
    for d in details:
        if (m := _KERNEL_RE.match(d["name"])) is not None:
            name = m.group(1)
            if d["dtype"] != np.uint8:
                raise ValueError(f"{name}: expected uint8 weights, got {d['dtype']}.")
            w = interpreter.get_tensor(d["index"])
            # TFLite conv kernels are [out, kh, kw, in]; depthwise are [1, kh, kw, channels].
            kernel = (
                w[0][:, :, None, :]
                if name.endswith("_depthwise")
                else np.transpose(w, (1, 2, 3, 0))
            )
            scale, zp = _tflite.scalar_quant(d)
            flat[f"{name}/kernel"] = np.ascontiguousarray(kernel)
            flat[f"{name}/kernel_scale"] = scale
            flat[f"{name}/kernel_zero_point"] = zp
        elif (m := _BIAS_RE.match(d["name"])) is not None:
            name = m.group(1)
            if d["dtype"] != np.int32:
                raise ValueError(f"{name}: expected int32 bias, got {d['dtype']}.")
            scale, _ = _tflite.scalar_quant(d)
            flat[f"{name}/bias"] = interpreter.get_tensor(d["index"]).copy()
            flat[f"{name}/bias_scale"] = scale
    found = {k.split("/")[0] for k in flat if "/" in k}
    missing = [n for n in layer_names() if n not in found]
    if missing:
        raise ValueError(
            f"tflite_path: {str(path)!r} is not the MobileNetV1 1.0 embedding "
            f"extractor: no weights for layers {missing[:5]}."
        )
    # Shape check against the Flax module before anything is written.
    dequantize(flat)
    return flat


def load_mobilenet_v1(
    path: str | os.PathLike[str] | None = None,
    *,
    emulate_quantization: bool = False,
) -> tuple[MobileNetV1, dict[str, Any]]:
    """Loads MobileNetV1 with ImageNet weights.

    Args:
      path: None for the weights shipped with the package; a `.npz` written by
        `tflite_convert.convert_mobilenet_v1`; or the original `.tflite` file (needs the optional
        `ai-edge-litert` package).
      emulate_quantization: round activations like the uint8 interpreter (see
        `MobileNetV1.activation_scale`); off by default.

    Returns:
      `(module, variables)`; `module.apply(variables, preprocess(images))` is `[batch, 1024]`.
    """
    if path is None:
        flat = _weights.load_npz(_weights.asset_path(WEIGHTS_FILE), what="MobileNetV1 weights")
    elif pathlib.Path(path).suffix == ".tflite":
        flat = read_tflite(path)
    else:
        flat = _weights.load_npz(path, what="MobileNetV1 weights")
    variables = dequantize(flat)
    scale = float(flat["activation_scale"]) if emulate_quantization else None
    return MobileNetV1(activation_scale=scale), variables
