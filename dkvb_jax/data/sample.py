"""The small real CIFAR-10 sample shipped inside the package (for the demo and offline tests).

2,000 train + 500 test JPEG images (200/50 per class), read in place from
``dkvb_jax/assets/cifar10_sample/cifar10_sample.zip``; see the README beside it for provenance.
"""

from __future__ import annotations

import importlib.resources
import pathlib

from dkvb_jax.data.image_folder import CIFAR10_CLASSES, ImageFolderSource

SAMPLE_SPLITS: tuple[str, ...] = ("train", "test")


def cifar10_sample_path() -> pathlib.Path:
    """Path of the shipped sample zip."""
    path = (
        importlib.resources.files("dkvb_jax") / "assets" / "cifar10_sample" / "cifar10_sample.zip"
    )
    path = pathlib.Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"The shipped CIFAR-10 sample is missing at {path}; reinstall dkvb_jax, or rebuild it "
            "with experiments/make_cifar10_sample.py."
        )
    return path


def load_cifar10_sample(
    split: str = "train", *, image_size: int | tuple[int, int] | None = None
) -> ImageFolderSource:
    """The shipped CIFAR-10 sample's ``split`` (``"train"`` or ``"test"``), CIFAR-10 label ids.

    Args:
        split: ``"train"`` (2,000 images) or ``"test"`` (500 images).
        image_size: optional resize target; the images are 32x32.

    Returns:
        An :class:`ImageFolderSource` with ``class_names == CIFAR10_CLASSES``.
    """
    if split not in SAMPLE_SPLITS:
        raise ValueError(f"split must be one of {SAMPLE_SPLITS}, got {split!r}.")
    return ImageFolderSource(
        cifar10_sample_path(), split, class_names=CIFAR10_CLASSES, image_size=image_size
    )
