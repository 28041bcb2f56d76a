"""Converter: quantised MobileNetV1 TFLite embedding extractor -> compact `.npz` for Flax.

Also the interpreter reference the port is tested against (`interpreter_embeddings`). Needs the
optional `ai-edge-litert` package (`pip install dkvb_jax[tflite]`) to read the flatbuffer (the
parsing is `mobilenet_v1.read_tflite`); the library runtime only reads the `.npz` this writes.
Run once:

  python -m dkvb_jax.encoders.tflite_convert \
      ../shared/weights/mobilenet_v1/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite \
      dkvb_jax/assets/mobilenet_v1_1.0_224_quant.npz
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

from dkvb_jax.encoders import _tflite, mobilenet_v1


def convert_mobilenet_v1(
    tflite_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> pathlib.Path:
    """Converts the TFLite model to the compact `.npz` read by `load_mobilenet_v1`."""
    flat = mobilenet_v1.read_tflite(tflite_path)
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
    interpreter = _tflite.interpreter(pathlib.Path(tflite_path))
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
    interpreter = _tflite.interpreter(pathlib.Path(tflite_path))
    return _tflite.scalar_quant(interpreter.get_output_details()[0])


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(f"usage: python -m {__spec__.name} MODEL.tflite OUT.npz")
    out = convert_mobilenet_v1(argv[1], argv[2])
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv)
