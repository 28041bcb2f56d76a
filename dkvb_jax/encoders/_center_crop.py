"""Resize-shorter-side, center-crop and normalise: the eval transform of torchvision and CLIP."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from dkvb_jax.encoders._images import as_float, check_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_center_crop_normalize(
    images: Any,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    method: str = "bilinear",
) -> jax.Array:
    """Resizes the shorter side to `size`, crops the central `size x size`, normalises per channel.

    Args:
      images: `[batch, height, width, 3]` RGB, uint8 or float pixels in [0, 255].
      size: output side in pixels.
      mean, std: per-channel statistics of pixels scaled to [0, 1].
      method: `jax.image.resize` method ('bilinear' for torchvision, 'bicubic' for CLIP).

    Returns:
      `[batch, size, size, 3]` float32.
    """
    check_images(images)
    x = as_float(images) / 255.0
    b, h, w, c = x.shape
    short = min(h, w)
    # torchvision.transforms.Resize(int): the shorter side becomes `size`, the other scales along.
    new_h, new_w = (
        (size, max(size, int(size * w / h))) if h == short else (max(size, int(size * h / w)), size)
    )
    if (new_h, new_w) != (h, w):
        x = jax.image.resize(x, (b, new_h, new_w, c), method, antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[:, top : top + size, left : left + size, :]
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def make_preprocess(
    size: int, mean: Sequence[float], std: Sequence[float], method: str = "bilinear"
) -> Callable[[Any], jax.Array]:
    """A jitted `images [batch, h, w, 3] -> [batch, size, size, 3]` for one encoder."""
    fn = functools.partial(
        resize_center_crop_normalize, size=size, mean=tuple(mean), std=tuple(std), method=method
    )
    return jax.jit(fn)
