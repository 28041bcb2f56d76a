"""Datasets by name: one call from a name (and an optional data folder) to a source."""

from __future__ import annotations

import os
import pathlib

from dkvb_jax.data.image_folder import CIFAR10_CLASSES, ImageFolderSource
from dkvb_jax.data.sample import load_cifar10_sample
from dkvb_jax.data.sources import Source
from dkvb_jax.data.tfds_source import TfdsSource

DATASETS: tuple[str, ...] = ("cifar10_sample", "cifar10", "cifar100", "imagenet2012", "folder")
_CIFAR10_ZIP = "cifar10-jpeg.zip"
# Datasets whose rows are drawn from another's (row ids do not map): provenance treats a part
# fitted on the larger set as having seen every row of the sample.
_DRAWN_FROM = {"cifar10_sample": "cifar10"}


def row_namespace(name: str, split: str) -> str:
    """The provenance namespace of a dataset split, ``"<dataset>/<split>"``."""
    return f"{name}/{split}"


def drawn_from(namespace: str) -> str | None:
    """The namespace a sample's rows are drawn from (``cifar10_sample/train`` -> ``cifar10/train``)."""
    name, _, split = namespace.partition("/")
    parent = _DRAWN_FROM.get(name)
    return None if parent is None else row_namespace(parent, split)


def get_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> Source:
    """The `split` of dataset `name`.

    Args:
      name: ``cifar10_sample`` (shipped with the package), ``cifar10``, ``cifar100``,
        ``imagenet2012`` (tensorflow-datasets; ImageNet needs its manual download in
        ``data_dir``), or ``folder`` (an image folder or zip at ``data_dir`` laid out as
        ``split/class/image``). For ``cifar10``, a ``data_dir`` holding ``cifar10-jpeg.zip``
        (or an image folder) is read directly instead of through tfds.
      split: ``train`` or ``test``.
      data_dir: where the data lives (tfds data dir, image folder, or zip).
      image_size: optional resize of the images.

    Raises:
      ValueError: unknown dataset name. FileNotFoundError: a missing data_dir.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.")
    if data_dir is not None and not pathlib.Path(data_dir).exists():
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} does not exist.")
    if name == "cifar10_sample":
        return load_cifar10_sample(split, image_size=image_size)
    if name == "folder":
        if data_dir is None:
            raise ValueError(
                "Dataset 'folder' needs --data-dir pointing at an image folder or zip."
            )
        return ImageFolderSource(data_dir, split, image_size=image_size)
    if name == "cifar10" and data_dir is not None:
        root = pathlib.Path(data_dir)
        if root.is_dir() and (root / _CIFAR10_ZIP).is_file():
            root = root / _CIFAR10_ZIP
        if root.is_file() or (root / split).is_dir():
            return ImageFolderSource(
                root, split, class_names=CIFAR10_CLASSES, image_size=image_size
            )
    return TfdsSource(name, split, data_dir=data_dir, image_size=image_size)
