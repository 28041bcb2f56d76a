"""A torch-free reader for PyTorch's legacy (pre-1.6) `torch.save` format.

The legacy format is a sequence of pickles in one file: the magic number, the protocol version
(1001), a dict of system info, the object itself (tensors refer to storages through persistent
ids `('storage', StorageType, key, location, numel[, view_metadata])`), the sorted list of
storage keys, and then for each key an int64 element count followed by the raw little-endian
storage bytes.

Every pickle goes through the restricted unpickler of `dkvb_jax.encoders._torch_pickle` (shared
with the zip format), so a file cannot run code: a global outside its allow-list raises
`UnsafePickleError` (a `pickle.UnpicklingError`). Tensors come back as NumPy arrays.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

from dkvb_jax.encoders import _torch_pickle
from dkvb_jax.encoders._torch_pickle import StorageRef, UnsafePickleError

__all__ = ["UnsafePickleError", "load_legacy"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def _load_one(f: BinaryIO, what: str) -> Any:
    try:
        return _torch_pickle.load(f)
    except UnsafePickleError:
        raise
    except EOFError as e:
        raise ValueError(f"{what}: the file ends early (truncated download?).") from e
    except (pickle.UnpicklingError, struct.error) as e:
        raise ValueError(f"{what}: corrupt or truncated pickle ({e}).") from e


def _read_storages(
    f: BinaryIO, keys: list[str], refs: dict[str, StorageRef], source: str
) -> dict[str, np.ndarray]:
    storages = {}
    for key in keys:
        if key not in refs:
            raise ValueError(f"{source}: storage {key!r} is stored but never referenced.")
        ref = refs[key]
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"{source}: the file ends before storage {key!r} (truncated?).")
        numel = int.from_bytes(header, "little", signed=True)
        if numel != ref.numel:
            raise ValueError(
                f"{source}: storage {key!r} has {numel} elements, expected {ref.numel}."
            )
        nbytes = numel * ref.dtype.itemsize
        left = _bytes_left(f)
        if nbytes > left:
            raise ValueError(
                f"{source}: storage {key!r} declares {numel} elements ({nbytes} bytes) but only "
                f"{left} bytes are left in the file (truncated or corrupt file); nothing was "
                "allocated for it."
            )
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError(
                f"{source}: storage {key!r} is cut short ({len(data)} of {nbytes} "
                "bytes; truncated file?)."
            )
        storages[key] = np.frombuffer(data, dtype=ref.dtype)
    return storages


def _bytes_left(f: BinaryIO) -> int:
    pos = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return end - pos


def load_legacy(path: str | os.PathLike[str] | BinaryIO) -> Any:
    """Reads a legacy-format `torch.save` file without torch.

    Args:
      path: a file path or a binary file object.

    Returns:
      The saved object with every tensor as a NumPy array (dicts, OrderedDicts, lists, numbers and
      strings kept as they are).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a legacy torch file, or truncated / corrupt.
      UnsafePickleError: the pickle names a global outside the allow-list (nothing is run).
    """
    if isinstance(path, (str, os.PathLike)):
        p = pathlib.Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path: no file at {str(p)!r}.")
        with open(p, "rb") as f:
            return _load(f, str(p))
    return _load(path, "<file object>")


def _load(f: BinaryIO, source: str) -> Any:
    head = f.read(4)
    f.seek(-len(head), io.SEEK_CUR)
    if head.startswith(b"PK"):
        raise ValueError(
            f"{source}: this is the zip-based torch.save format (PyTorch >= 1.6), not "
            "the legacy format; read it with dkvb_jax.encoders.state_dict.load_state_dict."
        )
    try:
        magic = _load_one(f, source)
    except ValueError as e:
        raise ValueError(f"{source}: not a PyTorch legacy file ({e}).") from e
    if magic != MAGIC_NUMBER:
        raise ValueError(f"{source}: not a PyTorch legacy file (bad magic number).")
    protocol = _load_one(f, source)
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"{source}: unsupported legacy protocol {protocol!r}, expected 1001.")
    sys_info = _load_one(f, source)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError(f"{source}: only little-endian legacy files are supported.")
    obj = _load_one(f, source)
    keys = _load_one(f, source)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ValueError(f"{source}: expected the list of storage keys after the object.")
    storages = _read_storages(f, keys, _torch_pickle.storage_refs(obj), source)
    return _torch_pickle.materialise(obj, storages, source)
