"""A torch-free, restricted reader for PyTorch's legacy (pre-1.6) `torch.save` format.

The legacy format is a sequence of pickles in one file: the magic number, the protocol version
(1001), a dict of system info, the object itself (tensors refer to storages through persistent
ids `('storage', StorageType, key, location, numel[, view_metadata])`), the sorted list of
storage keys, and then for each key an int64 element count followed by the raw little-endian
storage bytes.

Unpickling is restricted: `find_class` admits only the names a state dict needs
(`collections.OrderedDict`, `torch._utils._rebuild_tensor[_v2]`, `_rebuild_parameter` and the
`torch.*Storage` types, all mapped to local stand-ins), so a file cannot run code; anything else
raises `UnsafePickleError` (a `pickle.UnpicklingError`). Tensors come back as NumPy arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pathlib
import pickle
import struct
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from dkvb_jax.encoders import _weights

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global outside the allow-list; nothing from it was executed."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes come later in the stream."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage reference; not a legacy state dict.")
    ref = _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))
    # Checked against the declared element count, before any storage byte is read;
    # _read_storages then checks the file holds that many.
    _weights.check_tensor_view(ref.size, ref.stride, ref.offset, storage.numel)
    return ref


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> _TensorRef:
    del requires_grad, backward_hooks, metadata  # Irrelevant for frozen weights.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> _TensorRef:
    del requires_grad, backward_hooks
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED` globals and legacy storage persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only plain tensors, dicts and "
                "OrderedDicts are allowed in a weights file (it may be malicious or not a state "
                "dict)."
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}.")
        storage_type, key, _, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"persistent id names no storage type: {storage_type!r:.80}."
            )
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (pre-0.4 checkpoints) are not supported.")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _load_one(f: BinaryIO, what: str) -> Any:
    try:
        return _RestrictedUnpickler(f).load()
    except UnsafePickleError:
        raise
    except EOFError as e:
        raise ValueError(f"{what}: the file ends early (truncated download?).") from e
    except (pickle.UnpicklingError, TypeError, IndexError, struct.error) as e:
        raise ValueError(f"{what}: corrupt or truncated pickle ({e}).") from e


def _read_storages(
    f: BinaryIO, keys: list[str], refs: dict[str, _StorageRef], source: str
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


def _materialise(obj: Any, storages: dict[str, np.ndarray], source: str) -> Any:
    if isinstance(obj, _TensorRef):
        base = storages.get(obj.storage.key)
        if base is None:
            raise ValueError(f"{source}: tensor refers to missing storage {obj.storage.key!r}.")
        # The view was checked against the storage's element count when it was unpickled, and
        # _read_storages read exactly that many elements.
        if 0 in obj.size:
            return np.zeros(obj.size, base.dtype)
        item = base.itemsize
        return np.lib.stride_tricks.as_strided(
            base[obj.offset :], shape=obj.size, strides=tuple(s * item for s in obj.stride)
        ).copy()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict(
            (k, _materialise(v, storages, source)) for k, v in obj.items()
        )
    if isinstance(obj, dict):
        return {k: _materialise(v, storages, source) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages, source) for v in obj)
    return obj


def _collect_refs(obj: Any, out: dict[str, _StorageRef]) -> None:
    if isinstance(obj, _TensorRef):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_refs(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_refs(v, out)


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
    refs: dict[str, _StorageRef] = {}
    _collect_refs(obj, refs)
    storages = _read_storages(f, keys, refs, source)
    return _materialise(obj, storages, source)
