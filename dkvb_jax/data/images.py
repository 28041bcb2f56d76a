"""Decoding, colour conversion and resizing shared by all sources.

Colour rule (``non_rgb``):

* ``"convert"`` (default): PIL's ``Image.convert("RGB")``; grayscale is replicated to three
  channels, palette images are expanded, CMYK is converted, and an alpha channel is dropped
  (the colour under transparent pixels is kept as stored; it is not composited on a background).
  NumPy images with 1 channel are replicated and with 4 channels lose the last one, the same rule.
* ``"error"``: anything that is not already 3-channel RGB raises a ValueError naming the image.

Size rule (``image_size``):

* ``None`` (default): images keep their stored size; a batch whose images differ in size raises
  a ValueError naming the odd image and suggesting ``image_size``.
* ``(height, width)`` or an int: scale so the image covers the target (shorter side matches,
  bicubic with antialiasing), then centre-crop. Images already at the target are untouched.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from dkvb_jax.errors import InputError

NonRGB = Literal["convert", "error"]
NON_RGB_MODES: tuple[str, ...] = ("convert", "error")


def check_non_rgb(non_rgb: str) -> str:
    if non_rgb not in NON_RGB_MODES:
        raise ValueError(f"non_rgb must be one of {NON_RGB_MODES}, got {non_rgb!r}.")
    return non_rgb


def normalize_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Returns ``(height, width)`` or None; rejects non-positive or malformed sizes."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"image_size must be None, an int or (height, width), got {image_size!r}."
        ) from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return h, w


def decode(data: bytes, *, where: str, non_rgb: str = "convert") -> Image.Image:
    """Decodes encoded image bytes into an RGB PIL image.

    Raises:
        ValueError: the bytes are not a decodable image, an image of more pixels than PIL's
            decompression-bomb limit, or (``non_rgb="error"``) not RGB.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # Decode now so a truncated file fails here, with its name attached.
    except Image.DecompressionBombError as e:
        raise InputError(
            f"Image {where} is refused as a decompression bomb: {e} If it is a genuine image, "
            "raise PIL.Image.MAX_IMAGE_PIXELS (or resize the file)."
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"Cannot decode image {where}: {e}. Remove or replace the file.") from e
    if img.mode != "RGB":
        if non_rgb == "error":
            raise ValueError(
                f"Image {where} has mode {img.mode!r}, not RGB; convert it or pass non_rgb='convert'."
            )
        img = img.convert("RGB")
    return img


def array_to_rgb(image: np.ndarray, *, where: str, non_rgb: str = "convert") -> np.ndarray:
    """Returns a uint8 ``[H, W, 3]`` array from a ``[H, W]`` or ``[H, W, C]`` uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"Image {where} must be uint8, got {image.dtype}.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Image {where} must be [H, W] or [H, W, 1|3|4], got shape {image.shape}.")
    if image.shape[-1] == 3:
        return image
    if non_rgb == "error":
        raise ValueError(
            f"Image {where} has {image.shape[-1]} channels, not 3; pass non_rgb='convert'."
        )
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def resize(img: Image.Image | np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Cover-resizes and centre-crops to ``size`` (see module docstring); uint8 ``[H, W, 3]``."""
    arr = np.asarray(img)
    if size is None or arr.shape[:2] == size:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if not isinstance(img, Image.Image):
        img = Image.fromarray(arr)
    th, tw = size
    w, h = img.size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - th) // 2, (nw - tw) // 2
    img = img.crop((left, top, left + tw, top + th))
    return np.asarray(img, dtype=np.uint8)


def stack(images: list[np.ndarray], *, names: list[str]) -> np.ndarray:
    """Stacks same-sized images into uint8 ``[b, H, W, 3]``; a size mismatch names the image."""
    shape = images[0].shape
    for img, name in zip(images, names, strict=True):
        if img.shape != shape:
            raise ValueError(
                f"Image {name} has shape {img.shape}, but {names[0]} has {shape}; images in a "
                "split must share one size. Pass image_size=(height, width) to resize them."
            )
    return np.stack(images)
