"""Image-folder sources: ``root/split/class/image`` as a directory or a zip archive.

The zip is read in place (random access by member name through :mod:`zipfile`, nothing is
extracted), so ``../shared/data/cifar10/cifar10-jpeg.zip`` is used as it is. A zip whose
content sits under one top-level folder (``name/train/cat/...``, as made by zipping a folder) is
accepted too. ``split=None`` reads ``root/class/image`` (no split level), e.g. a LACUNA-style
folder of face identities.

Labels: class ``i`` is ``class_names[i]``. By default ``class_names`` is the sorted list of the
split's class folders that hold at least one image; pass ``class_names`` explicitly (e.g. the train
split's ``class_names`` to the test split) to fix the label order, to keep a label for a class with
no images in this split, or to follow a canonical order. CIFAR-10's folder names sort into its
canonical label order (:data:`CIFAR10_CLASSES`).

Examples are ordered by (label, path) and ``id`` is the position in that order. Files whose
extension is not an image's (``IMAGE_EXTENSIONS``) and hidden files are ignored. Colour and size
rules are those of :mod:`dkvb_jax.data.images`; decoding happens on read, so an undecodable image
raises a ValueError naming the file when it is first read.

Hostile or broken data is refused with an error naming the file: an image larger than
``max_image_bytes`` (checked against the zip directory, then enforced while reading, so a
compressed member cannot expand past it) and a folder whose symlinks lead back to one of its own
ancestors (which would list the same images again and again).
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Sequence

import numpy as np

from dkvb_jax import _validation
from dkvb_jax.data import images as images_lib
from dkvb_jax.data.sources import ImageSource
from dkvb_jax.errors import InputError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# Far above any dataset image (a 24-megapixel JPEG is ~10 MB), far below what would hurt a host.
MAX_IMAGE_BYTES = 64 << 20


def _is_image(rel: str) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


class ImageFolderSource(ImageSource):
    """Labelled images from ``root/split/class/...`` in a directory or a zip archive.

    Args:
        root: a directory, or a ``.zip`` file, holding the split folders.
        split: split folder name (``"train"``, ``"test"``, ...), or None for ``root/class/...``.
        class_names: label order; default sorted class folder names (see module docstring).
        image_size: optional ``(height, width)`` resize target (see :mod:`dkvb_jax.data.images`).
        non_rgb: ``"convert"`` (default) or ``"error"`` for grayscale/RGBA/palette images.
        max_image_bytes: largest stored (encoded) image read; a larger one is refused on read.

    Raises:
        FileNotFoundError: ``root`` or the split folder does not exist.
        ValueError: ``root`` is not a zip archive or directory, no class folder holds images, a
            class folder is not in the given ``class_names``, or a symlink loop in the folder.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        *,
        class_names: Sequence[str] | None = None,
        image_size: int | tuple[int, int] | None = None,
        non_rgb: str = "convert",
        max_image_bytes: int = MAX_IMAGE_BYTES,
    ):
        self.root = pathlib.Path(root)
        self.split = split
        self._non_rgb = images_lib.check_non_rgb(non_rgb)
        _validation.check_positive_int(max_image_bytes, "max_image_bytes")
        self._max_bytes = int(max_image_bytes)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if not self.root.exists():
            raise FileNotFoundError(f"root {str(self.root)!r} does not exist.")
        self.is_zip = self.root.is_file()
        if self.is_zip:
            files = self._list_zip()
        elif self.root.is_dir():
            files = self._list_dir()
        else:
            raise ValueError(f"root {str(self.root)!r} is neither a directory nor a zip file.")
        prefix, files = self._select_split(files)
        by_class: dict[str, list[str]] = {}
        for rel in files:
            cls, _, rest = rel[len(prefix) :].partition("/")
            if rest:  # Files directly under the split folder belong to no class.
                by_class.setdefault(cls, []).append(rel)
        where = f"{str(self.root)!r}" + (f" split {split!r}" if split else "")
        if not by_class:
            raise ValueError(
                f"No class folders with images under {where}; expected "
                f"{'split/' if split else ''}class/image files with extensions "
                f"{sorted(IMAGE_EXTENSIONS)}."
            )
        if class_names is None:
            class_names = sorted(by_class)
        else:
            class_names = [str(c) for c in class_names]
            if len(set(class_names)) != len(class_names):
                raise ValueError(f"class_names has duplicates: {class_names}.")
            unknown = sorted(set(by_class) - set(class_names))
            if unknown:
                raise ValueError(
                    f"Class folders {unknown} under {where} are not in class_names={class_names}."
                )
        super().__init__(class_names, image_size)
        members, labels = [], []
        for label, cls in enumerate(class_names):
            paths = sorted(by_class.get(cls, []))
            members += paths
            labels += [label] * len(paths)
        self._members = members
        self._labels = np.asarray(labels, dtype=np.int32)

    # Listing ---------------------------------------------------------------------------------

    def _open_zip(self) -> zipfile.ZipFile:
        # One handle per process: a ZipFile must not be shared across fork()ed workers.
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.root)
            except zipfile.BadZipFile as e:
                raise ValueError(
                    f"root {str(self.root)!r} is a file but not a readable zip archive ({e}); "
                    "it may be truncated. Pass a directory or a complete .zip file."
                ) from e
            self._zip_pid = os.getpid()
        return self._zip

    def _list_zip(self) -> list[str]:
        return [n for n in self._open_zip().namelist() if not n.endswith("/") and _is_image(n)]

    def _list_dir(self) -> list[str]:
        """Image paths relative to the root, following symlinks but refusing loops."""
        out = []
        # (directory, its path relative to the root, the (device, inode) of it and its ancestors)
        todo = [(self.root, "", frozenset())]
        while todo:
            directory, rel_dir, above = todo.pop()
            st = directory.stat()
            ident = (st.st_dev, st.st_ino)
            if ident in above:
                raise InputError(
                    f"{str(directory)!r} under root {str(self.root)!r} is a symlink loop: it leads "
                    "back to a folder that contains it. Remove the link, or point it elsewhere."
                )
            with os.scandir(directory) as entries:
                for entry in entries:
                    rel = f"{rel_dir}{entry.name}"
                    if entry.is_dir():  # follows symlinks, like os.walk(followlinks=True)
                        if not entry.name.startswith("."):
                            todo.append((pathlib.Path(entry.path), rel + "/", above | {ident}))
                    elif _is_image(rel):
                        out.append(rel)
        return out

    def _select_split(self, files: list[str]) -> tuple[str, list[str]]:
        """Finds the prefix of the split folder, allowing one enclosing top-level folder."""
        tops = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        if self.split is None:
            # A single folder wrapping class folders (zip of "faces/") is a wrapper, not a class.
            if len(tops) == 1 and all(f.count("/") >= 2 for f in files):
                return tops[0] + "/", files
            return "", files
        for outer in [""] + ([tops[0] + "/"] if len(tops) == 1 else []):
            prefix = f"{outer}{self.split}/"
            chosen = [f for f in files if f.startswith(prefix)]
            if chosen:
                return prefix, chosen
        raise FileNotFoundError(
            f"No split folder {self.split!r} with images in {str(self.root)!r}; top-level folders "
            f"are {tops}. Pass split= one of them, or split=None for root/class/image."
        )

    # Access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._members)

    @property
    def labels(self) -> np.ndarray:
        """int32 ``[n]``, the labels of all examples (no image is decoded)."""
        return self._labels

    @property
    def members(self) -> tuple[str, ...]:
        """Relative path of each example (``members[id]``), inside the directory or zip."""
        return tuple(self._members)

    def read_bytes(self, index: int) -> bytes:
        """The stored (encoded) bytes of example ``index``, at most ``max_image_bytes``."""
        rel = self._members[index]
        if self.is_zip:
            zf = self._open_zip()
            try:
                info = zf.getinfo(rel)
                self._check_size(rel, info.file_size)
                with zf.open(info) as f:
                    # Read one byte past the cap: a member whose header understates its size
                    # stops here instead of expanding without bound.
                    data = f.read(self._max_bytes + 1)
            except zipfile.BadZipFile as e:
                raise ValueError(f"Cannot read {rel!r} from {str(self.root)!r}: {e}.") from e
        else:
            path = self.root / rel
            self._check_size(rel, path.stat().st_size)
            with open(path, "rb") as f:
                data = f.read(self._max_bytes + 1)
        self._check_size(rel, len(data))
        return data

    def _check_size(self, rel: str, size: int) -> None:
        if size > self._max_bytes:
            raise InputError(
                f"Image {rel!r} in {str(self.root)!r} holds {size} bytes, more than "
                f"max_image_bytes={self._max_bytes}; it is corrupt or hostile (a decompression "
                "bomb), or pass a larger max_image_bytes if it is genuine."
            )

    def _read_one(self, index: int) -> tuple[np.ndarray, int, str]:
        where = f"{self._members[index]!r} in {str(self.root)!r}"
        img = images_lib.decode(self.read_bytes(index), where=where, non_rgb=self._non_rgb)
        return images_lib.resize(img, self._image_size), int(self._labels[index]), where

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None  # Reopened lazily in the receiving process.
        return state

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource(root={str(self.root)!r}, split={self.split!r}, "
            f"num_examples={len(self)}, num_classes={self.num_classes})"
        )
