"""Converter: quantised MobileNetV1 TFLite embedding extractor -> compact `.npz` for Flax.

Needs the optional `ai-edge-litert` package (`pip install dkvb_jax[tflite]`) to read the
flatbuffer; the library runtime only reads the `.npz` this writes. Run once:

  python -m dkvb_jax.encoders.tflite_convert \
      ../shared/weights/mobilenet_v1/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite \
      dkvb_jax/assets/mobilenet_v1_1.0_224_quant.npz
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Any

import numpy as np

from dkvb_jax.encoders import mobilenet_v1

# Weight tensors are named e.g. 'MobilenetV1/MobilenetV1/Conv2d_3_depthwise/depthwise_Fold;...'
# and biases 'MobilenetV1/MobilenetV1/Conv2d_3_depthwise/BatchNorm_Fold/bias'.
_LAYER = r"^MobilenetV1/MobilenetV1/(Conv2d_\d+(?:_depthwise|_pointwise)?)/"
_KERNEL_RE = re.compile(_LAYER + r"[^;]*_Fold;.*weights_quant")
_BIAS_RE = re.compile(_LAYER + r"BatchNorm_Fold/bias$")


def _interpreter(path: pathlib.Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError(
            "reading .tflite files needs the optional package ai-edge-litert "
            '(pip install "dkvb_jax[tflite]"); the shipped .npz weights do not.'
        ) from e
    if not path.is_file():
        raise FileNotFoundError(f"tflite_path: no file at {str(path)!r}.")
    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ValueError(
            f"tflite_path: {str(path)!r} is not a readable TFLite model (truncated or "
            f"corrupt?): {e}"
        ) from e
    return interpreter


def _scalar_quant(detail: dict[str, Any]) -> tuple[np.float32, np.int32]:
    q = detail["quantization_parameters"]
    if q["scales"].size != 1:
        raise ValueError(
            f"tensor {detail['name']!r}: expected per-tensor quantisation, got "
            f"{q['scales'].size} scales (per-channel models are not supported)."
        )
    return np.float32(q["scales"][0]), np.int32(q["zero_points"][0])


def read_mobilenet_v1_tflite(tflite_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads the quantised weights of the MobileNetV1 TFLite model.

    Args:
      tflite_path: the `.tflite` embedding extractor (uint8 weights, int32 biases).

    Returns:
      Flat arrays for `mobilenet_v1.dequantize`: per layer `{name}/kernel` uint8 in Flax layout
      `[kh, kw, in / groups, out]`, `{name}/kernel_scale`, `{name}/kernel_zero_point`,
      `{name}/bias` int32 `[out]` and `{name}/bias_scale`; the activation scale shared by all
      uint8 activations (`activation_scale`); and `__format__`.
    """
    path = pathlib.Path(tflite_path)
    interpreter = _interpreter(path)
    flat: dict[str, np.ndarray] = {"__format__": np.array(mobilenet_v1.FORMAT)}
    details = interpreter.get_tensor_details()
    input_index = interpreter.get_input_details()[0]["index"]
    act_scales = {
        _scalar_quant(d)[0]
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
            scale, zp = _scalar_quant(d)
            flat[f"{name}/kernel"] = np.ascontiguousarray(kernel)
            flat[f"{name}/kernel_scale"] = scale
            flat[f"{name}/kernel_zero_point"] = zp
        elif (m := _BIAS_RE.match(d["name"])) is not None:
            name = m.group(1)
            if d["dtype"] != np.int32:
                raise ValueError(f"{name}: expected int32 bias, got {d['dtype']}.")
            scale, _ = _scalar_quant(d)
            flat[f"{name}/bias"] = interpreter.get_tensor(d["index"]).copy()
            flat[f"{name}/bias_scale"] = scale
    found = {k.split("/")[0] for k in flat if "/" in k}
    missing = [n for n in mobilenet_v1.layer_names() if n not in found]
    if missing:
        raise ValueError(
            f"tflite_path: {str(path)!r} is not the MobileNetV1 1.0 embedding "
            f"extractor: no weights for layers {missing[:5]}."
        )
    # Shape check against the Flax module before anything is written.
    mobilenet_v1.dequantize(flat)
    return flat


def convert_mobilenet_v1(
    tflite_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> pathlib.Path:
    """Converts the TFLite model to the compact `.npz` read by `load_mobilenet_v1`."""
    flat = read_mobilenet_v1_tflite(tflite_path)
    out = pathlib.Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **flat)
    return out


def interpreter_embeddings(
    tflite_path: str | os.PathLike[str], images_224: np.ndarray
) -> np.ndarray:
    """Runs the TFLite interpreter one image at a time.

    Args:
      tflite_path: the `.tflite` embedding extractor.
      images_224: uint8 `[batch, 224, 224, 3]`.

    Returns:
      The raw uint8 embeddings `[batch, 1024]`; multiply by `output_quantization(...)[0]`
      (the zero point is 0) for floats.
    """
    images_224 = np.asarray(images_224)
    if images_224.dtype != np.uint8 or images_224.shape[1:] != (224, 224, 3):
        raise ValueError(
            f"images_224: expected uint8 [batch, 224, 224, 3], got "
            f"{images_224.dtype} {images_224.shape}."
        )
    interpreter = _interpreter(pathlib.Path(tflite_path))
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    rows = []
    for image in images_224:
        interpreter.set_tensor(inp, image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out).reshape(-1).copy())
    return np.stack(rows)


def output_quantization(tflite_path: str | os.PathLike[str]) -> tuple[np.float32, np.int32]:
    """(scale, zero_point) of the model's uint8 embedding."""
    interpreter = _interpreter(pathlib.Path(tflite_path))
    return _scalar_quant(interpreter.get_output_details()[0])


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(f"usage: python -m {__spec__.name} MODEL.tflite OUT.npz")
    out = convert_mobilenet_v1(argv[1], argv[2])
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv)
