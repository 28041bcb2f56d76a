"""The common source protocol: random access to labelled images, batched per host.

A source is a finite, indexable split of labelled images. Every source in ``dkvb_jax.data``
(tfds, image folders, the shipped CIFAR-10 sample, in-memory arrays) has:

* ``num_classes: int`` and ``class_names: tuple[str, ...]`` (label ``i`` is ``class_names[i]``);
* ``__len__()``: number of examples in the split;
* ``read(indices)``: the examples at ``indices`` as one batch dict;
* ``batches(batch_size, ...)``: an iterator of batch dicts for one epoch on this host.

A batch is a dict of NumPy arrays::

    {'image': uint8 [b, H, W, 3], 'label': int32 [b], 'id': int64 [b], 'valid': bool [b]}

``id`` is the example's index in the split (stable across runs, hosts, shuffles and batch
sizes), so it can name examples to forget. ``valid`` is always present so every batch has the
same structure under ``jit``; it is False only on the padding rows added when
``drop_remainder=False`` (padding rows have a zero image, label 0 and id -1). See
:mod:`dkvb_jax.data.sharding` for how shuffling, sharding and the ragged tail work.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from dkvb_jax.data import images as images_lib
from dkvb_jax.data import sharding

Batch = dict[str, np.ndarray]


@runtime_checkable
class Source(Protocol):
    """What the rest of the library needs from a data source."""

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int] | np.ndarray) -> Batch: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> Iterator[Batch]: ...


class ImageSource(abc.ABC):
    """Base class: subclasses implement ``__len__``, ``_read_one`` and the class metadata."""

    def __init__(self, class_names: Sequence[str], image_size: int | tuple[int, int] | None):
        self._class_names = tuple(str(c) for c in class_names)
        if not self._class_names:
            raise ValueError("A source needs at least one class; class_names is empty.")
        self._image_size = images_lib.normalize_size(image_size)
        self._image_shape: tuple[int, int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The ``(height, width)`` images are resized to, or None for their stored size."""
        return self._image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the images served (the first example's when not resizing)."""
        if self._image_shape is None:
            if self._image_size is not None:
                self._image_shape = (*self._image_size, 3)
            elif len(self) == 0:
                raise ValueError(f"{self!r} is empty; it has no image shape.")
            else:
                self._image_shape = tuple(self._read_one(0)[0].shape)
        return self._image_shape

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples in the split."""

    @abc.abstractmethod
    def _read_one(self, index: int) -> tuple[np.ndarray, int, str]:
        """Returns (uint8 [H, W, 3] image already resized, label, a name for error messages)."""

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """One example, unbatched: ``{'image': uint8 [H, W, 3], 'label': int32, 'id': int64}``.

        This makes every source a random-access source for grain, e.g.
        ``grain.MapDataset.source(src).shuffle(seed=0).batch(32)``, for users who want grain's
        pipelines; ``batches`` is the library's own (no extra dependency, padding + ``valid``).
        """
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} out of range for {len(self)} examples.")
        img, label, _ = self._read_one(index)
        return {"image": img, "label": np.int32(label), "id": np.int64(index)}

    def read(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """Reads examples by index into a batch; ``-1`` entries become padding rows.

        Args:
            indices: int ``[b]`` indices into the split, or ``sharding.PAD_INDEX`` for padding.

        Returns:
            A batch dict (see the module docstring).
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        bad = (indices != sharding.PAD_INDEX) & ((indices < 0) | (indices >= n))
        if bad.any():
            raise IndexError(f"Indices {indices[bad][:5].tolist()} out of range for {n} examples.")
        valid = indices != sharding.PAD_INDEX
        imgs, labels, names = [], [], []
        for i in indices[valid]:
            img, label, name = self._read_one(int(i))
            imgs.append(img)
            labels.append(label)
            names.append(name)
        shape = imgs[0].shape if imgs else self.image_shape
        image = np.zeros((indices.size, *shape), dtype=np.uint8)
        if imgs:
            image[valid] = images_lib.stack(imgs, names=names)
        label = np.zeros(indices.size, dtype=np.int32)
        label[valid] = labels
        return {"image": image, "label": label, "id": indices.copy(), "valid": valid}

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> Iterator[Batch]:
        """Yields one epoch of this host's batches (see :func:`sharding.batch_plan`)."""
        plan = sharding.batch_plan(
            len(self),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            drop_remainder=drop_remainder,
            process_index=process_index,
            process_count=process_count,
        )
        for idx in plan.indices:
            yield self.read(idx)

    def num_batches(
        self,
        batch_size: int,
        *,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> int:
        """How many batches ``batches`` yields on this host (for progress bars)."""
        return sharding.batch_plan(
            len(self),
            batch_size,
            drop_remainder=drop_remainder,
            process_index=process_index,
            process_count=process_count,
        ).num_batches

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_examples={len(self)}, num_classes={self.num_classes})"


class ArraySource(ImageSource):
    """A source over images already in memory (NumPy arrays), e.g. for tests or small data.

    Args:
        images: uint8 ``[n, H, W, 3]`` (or ``[n, H, W]`` / ``[n, H, W, 1|4]``, converted per
            :mod:`dkvb_jax.data.images`).
        labels: int ``[n]`` in ``[0, len(class_names))``.
        class_names: one name per class; default ``("0", ..., str(max_label))``.
        image_size: optional resize target, see :mod:`dkvb_jax.data.images`.
        non_rgb: ``"convert"`` or ``"error"`` for non-RGB images.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        class_names: Sequence[str] | None = None,
        image_size: int | tuple[int, int] | None = None,
        non_rgb: str = "convert",
    ):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be [n, H, W] or [n, H, W, C], got shape {images.shape}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must have shape [{images.shape[0]}] to match images, got {labels.shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers, got {labels.dtype}.")
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)] or ["0"]
        super().__init__(class_names, image_size)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got range "
                f"[{labels.min()}, {labels.max()}]."
            )
        self._non_rgb = images_lib.check_non_rgb(non_rgb)
        self._images = images
        self._labels = labels.astype(np.int32)

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """int32 ``[n]``, all labels of the split."""
        return self._labels

    def _read_one(self, index: int) -> tuple[np.ndarray, int, str]:
        where = f"#{index}"
        img = images_lib.array_to_rgb(self._images[index], where=where, non_rgb=self._non_rgb)
        return images_lib.resize(img, self._image_size), int(self._labels[index]), where
