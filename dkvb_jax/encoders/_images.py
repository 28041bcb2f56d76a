"""Input checks and resizing shared by the encoders' preprocessing."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_images(images: Any, *, name: str = "images") -> None:
    """Checks that `images` is an RGB batch `[batch, height, width, 3]` of uint8 or floats.

    Runs on shapes and dtypes only, so it is free inside `jit`.
    """
    shape = getattr(images, "shape", None)
    dtype = getattr(images, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"{name}: expected an array [batch, height, width, 3], got "
            f"{type(images).__name__}; convert with np.asarray first."
        )
    if len(shape) != 4:
        hint = " (add a batch axis with images[None])" if len(shape) == 3 else ""
        raise ValueError(
            f"{name}: expected rank 4 [batch, height, width, 3], got shape {tuple(shape)}{hint}."
        )
    if shape[-1] != 3:
        raise ValueError(
            f"{name}: expected 3 RGB channels in the last axis (NHWC), got shape "
            f"{tuple(shape)}; convert grayscale/RGBA images to RGB first."
        )
    if not (np.issubdtype(dtype, np.unsignedinteger) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"{name}: expected uint8 or float pixels in [0, 255], got dtype {dtype}.")


def resize_to(images: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of `[batch, h, w, 3]` float images to `[batch, size, size, 3]` (no-op if equal)."""
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")


def as_float(images: Any) -> jax.Array:
    """uint8 or float pixels in [0, 255] as float32."""
    return jnp.asarray(images).astype(jnp.float32)
