"""Opening `.tflite` files with the optional `ai-edge-litert` interpreter (no model knowledge).

`mobilenet_v1` reads its weights through these, and `tflite_convert` (the converter and the
interpreter reference) builds on `mobilenet_v1`: the imports run one way.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np


def interpreter(path: pathlib.Path) -> Any:
    """An allocated `ai_edge_litert` interpreter for the model at `path`.

    Raises:
      ImportError: `ai-edge-litert` is not installed.
      FileNotFoundError: no file at `path`.
      ValueError: the file is not a readable TFLite model.
    """
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
        model = Interpreter(model_path=str(path))
        model.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ValueError(
            f"tflite_path: {str(path)!r} is not a readable TFLite model (truncated or "
            f"corrupt?): {e}"
        ) from e
    return model


def scalar_quant(detail: dict[str, Any]) -> tuple[np.float32, np.int32]:
    """`(scale, zero_point)` of a per-tensor quantised tensor's details."""
    q = detail["quantization_parameters"]
    if q["scales"].size != 1:
        raise ValueError(
            f"tensor {detail['name']!r}: expected per-tensor quantisation, got "
            f"{q['scales'].size} scales (per-channel models are not supported)."
        )
    return np.float32(q["scales"][0]), np.int32(q["zero_points"][0])
