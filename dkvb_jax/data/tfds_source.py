"""tensorflow-datasets sources: cifar10, cifar100, imagenet2012 (and other image datasets).

Two backends:

* ``"data_source"``: ``tfds.data_source`` over ArrayRecord files; random access, no TensorFlow
  needed. tfds prepares new datasets in this format when called this way.
* ``"tf"``: ``tfds.load`` for datasets prepared as TFRecord, which needs TensorFlow. The split is
  read once into memory (fine for CIFAR; for ImageNet re-prepare it as ArrayRecord instead).

``backend="auto"`` (default) uses ``data_source`` and falls back to ``tf`` only when the prepared
files are not random-access and TensorFlow is importable.

``imagenet2012`` needs a manual download: put ``ILSVRC2012_img_train.tar`` and
``ILSVRC2012_img_val.tar`` in ``manual_dir`` (default ``<data_dir>/downloads/manual``); tfds then
prepares it on first use. Its images vary in size, so pass ``image_size`` (e.g. 224).

``split="test"`` means ``"validation"`` for datasets without a test split (imagenet2012). tfds
slicing such as ``"train[:10%]"`` is passed through. ``id`` is the index in the (sliced) split.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

import numpy as np

from dkvb_jax.data import images as images_lib
from dkvb_jax.data.sources import ImageSource
from dkvb_jax.errors import InputError

Backend = Literal["auto", "data_source", "tf"]
BACKENDS: tuple[str, ...] = ("auto", "data_source", "tf")

# Split aliases per known dataset; other tfds names are passed through unaliased.
SPLIT_ALIASES: dict[str, dict[str, str]] = {
    "cifar10": {},
    "cifar100": {},
    "imagenet2012": {"test": "validation"},
}
MANUAL_DOWNLOAD: frozenset[str] = frozenset({"imagenet2012"})


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (needed only by the ``tf`` backend)."""
    return importlib.util.find_spec("tensorflow") is not None


def _import_tfds(name: str) -> Any:
    """The `tensorflow_datasets` module: an optional extra, so its absence is a clear error."""
    try:
        import tensorflow_datasets as tfds
    except ModuleNotFoundError as e:
        raise InputError(
            f"dataset {name!r} is read through tensorflow-datasets, which is not installed: "
            "pip install 'dkvb_jax[tfds]' (CIFAR-10 can also be read from a folder holding "
            "cifar10-jpeg.zip: --data-dir)."
        ) from e
    return tfds


def _resolve_split(name: str, split: str) -> str:
    base, bracket, rest = split.partition("[")
    return SPLIT_ALIASES.get(name, {}).get(base, base) + bracket + rest


class TfdsSource(ImageSource):
    """A split of a tensorflow-datasets image classification dataset.

    Args:
        name: tfds name, e.g. ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``.
        split: ``"train"``, ``"test"`` (``"validation"`` for imagenet2012) or a tfds slice.
        data_dir: tfds data directory (default: tfds's, ``~/tensorflow_datasets``).
        manual_dir: where manually downloaded archives are (imagenet2012).
        download: let tfds download and prepare the dataset if it is not prepared yet.
        image_size: optional ``(height, width)`` resize target (see :mod:`dkvb_jax.data.images`).
        non_rgb: ``"convert"`` or ``"error"`` for images that are not 3-channel.
        backend: ``"auto"``, ``"data_source"`` or ``"tf"`` (see the module docstring).
        label_key: feature holding the class label (cifar100: ``"label"`` fine, ``"coarse_label"``
            for the 20 superclasses).

    Raises:
        ValueError: unknown dataset, split or backend, or the dataset has no image/label feature.
        FileNotFoundError: imagenet2012's manual files are missing.
        ImportError: the ``tf`` backend was asked for without TensorFlow.
        InputError: tensorflow-datasets is not installed (the ``tfds`` extra).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        data_dir: str | os.PathLike | None = None,
        manual_dir: str | os.PathLike | None = None,
        download: bool = True,
        image_size: int | tuple[int, int] | None = None,
        non_rgb: str = "convert",
        backend: str = "auto",
        label_key: str = "label",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if not isinstance(split, str):
            raise TypeError(f"split must be a str such as 'train' or 'test', got {split!r}.")
        self.name = name
        self.split = _resolve_split(name, split)
        self._non_rgb = images_lib.check_non_rgb(non_rgb)
        self._label_key = label_key
        self._kwargs = dict(
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            download_and_prepare_kwargs=self._prepare_kwargs(name, manual_dir),
        )
        self.backend = backend
        if backend in ("auto", "data_source"):
            try:
                self._records, info = self._open_data_source()
                self.backend = "data_source"
            except NotImplementedError as e:  # Prepared as TFRecord: no random access.
                if backend == "data_source" or not tensorflow_available():
                    raise ValueError(
                        f"tfds dataset {name!r} in {data_dir or 'the default data_dir'} is not "
                        f"stored as ArrayRecord ({e}). Install tensorflow to read it with "
                        "backend='tf', or prepare it again with file_format='array_record'."
                    ) from e
                backend = "tf"
        if backend == "tf":
            self._records, info = self._load_with_tf()
            self.backend = "tf"
        features = info.features
        for key in ("image", label_key):
            if key not in features:
                raise ValueError(
                    f"tfds dataset {name!r} has no {key!r} feature (features: {list(features)})."
                )
        super().__init__(features[label_key].names, image_size)

    @staticmethod
    def _prepare_kwargs(name: str, manual_dir) -> dict[str, Any]:
        if manual_dir is None:
            return {}
        tfds = _import_tfds(name)

        return {"download_config": tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))}

    def _call(self, fn, **kwargs):
        """Runs a tfds entry point, translating its errors into ones that say what to do."""
        tfds = _import_tfds(self.name)

        try:
            return fn(self.name, split=self.split, **self._kwargs, **kwargs)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(
                f"Unknown tfds dataset {self.name!r}; supported here: {sorted(SPLIT_ALIASES)} "
                "(other tfds image classification datasets work too)."
            ) from e
        except AssertionError as e:  # tfds asserts on missing manual downloads.
            if self.name in MANUAL_DOWNLOAD:
                raise FileNotFoundError(
                    f"{self.name} needs a manual download: put its archives in manual_dir "
                    f"(see https://www.tensorflow.org/datasets/catalog/{self.name}). tfds said: {e}"
                ) from e
            raise
        except KeyError as e:
            raise ValueError(f"Unknown split {self.split!r} for tfds dataset {self.name!r}.") from e

    def _open_data_source(self):
        tfds = _import_tfds(self.name)

        ds = self._call(tfds.data_source)
        return ds, ds.dataset_info

    def _load_with_tf(self):
        if not tensorflow_available():
            raise ImportError("backend='tf' needs tensorflow: pip install tensorflow-cpu.")
        tfds = _import_tfds(self.name)

        ds, info = self._call(tfds.load, with_info=True)
        records = [
            {"image": ex["image"], self._label_key: ex[self._label_key]} for ex in tfds.as_numpy(ds)
        ]
        return records, info

    def __len__(self) -> int:
        return len(self._records)

    def _read_one(self, index: int) -> tuple[np.ndarray, int, str]:
        where = f"#{index} of {self.name}/{self.split}"
        rec = self._records[index]
        img = images_lib.array_to_rgb(rec["image"], where=where, non_rgb=self._non_rgb)
        return images_lib.resize(img, self._image_size), int(rec[self._label_key]), where

    def __repr__(self) -> str:
        return (
            f"TfdsSource(name={self.name!r}, split={self.split!r}, backend={self.backend!r}, "
            f"num_examples={len(self)}, num_classes={self.num_classes})"
        )


def load_tfds(name: str, split: str = "train", **kwargs) -> TfdsSource:
    """Shorthand for :class:`TfdsSource` (same arguments)."""
    return TfdsSource(name, split, **kwargs)
