"""Writes zip-format `torch.save` files without torch: fixtures for the state-dict reader tests.

The files hold an `OrderedDict` of tensors and load with `torch.load(path, weights_only=True)`
as well as with `dkvb_jax.encoders.state_dict.load_state_dict`. Kept independent of the reader
(its own dtype table and pickle opcodes), so a reader bug cannot hide behind a matching writer.
"""

from __future__ import annotations

import pathlib
import struct
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


def save_torch_zip(state_dict: Mapping[str, np.ndarray], path: str | pathlib.Path) -> None:
    """Writes `{name: array}` as torch does: contiguous tensors, one storage each.

    Entries are stored uncompressed and 64-byte aligned; the path's stem names the archive
    folder, as with torch.
    """
    tensors = {}
    storages = {}
    for i, (name, value) in enumerate(state_dict.items()):
        value = np.asarray(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        strides = tuple(s // value.itemsize for s in value.strides) if value.ndim else ()
        tensors[name] = (str(i), 0, value.shape, strides)
        storages[str(i)] = value.reshape(-1)
    write_torch_zip_raw(tensors, storages, path)


def write_torch_zip_raw(
    tensors: Mapping[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]],
    storages: Mapping[str, np.ndarray],
    path: str | pathlib.Path,
) -> None:
    """Writes a torch zip archive whose tensors are views `(storage_key, offset, size, stride)`.

    Lets tests build what torch writes for shared storage, offsets and non-contiguous strides.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2
    out += pickle_global("collections", "OrderedDict") + b")R"  # EMPTY_TUPLE REDUCE
    out += b"("  # MARK
    for name, (key, offset, size, stride) in tensors.items():
        storage = storages[key]
        out += pickle_unicode(name)
        out += pickle_global("torch._utils", "_rebuild_tensor_v2") + b"("  # MARK for the args
        out += b"(" + pickle_unicode("storage")
        out += pickle_global("torch", _STORAGE_NAMES[storage.dtype])
        out += pickle_unicode(key) + pickle_unicode("cpu") + _int(storage.size)
        out += b"tQ"  # TUPLE BINPERSID
        out += _int(offset)
        out += b"(" + b"".join(_int(s) for s in size) + b"t"
        out += b"(" + b"".join(_int(s) for s in stride) + b"t"
        out += b"\x89"  # NEWFALSE (requires_grad)
        out += pickle_global("collections", "OrderedDict") + b")R"  # backward_hooks
        out += b"tR"  # TUPLE REDUCE
    out += b"u."  # SETITEMS STOP
    stem = pathlib.Path(path).stem or "archive"
    records = [(f"{stem}/data.pkl", bytes(out)), (f"{stem}/byteorder", b"little")]
    records += [
        (f"{stem}/data/{k}", np.asarray(v, order="C").tobytes()) for k, v in storages.items()
    ]
    records += [(f"{stem}/version", b"3\n")]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in records:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            # torch aligns each record's data to 64 bytes with padding in an extra field 'FB'.
            start = zf.fp.tell() + 30 + len(name.encode()) + 4
            pad = (-start) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)


def pickle_global(module: str, name: str) -> bytes:
    """The GLOBAL opcode for `module.name`."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def pickle_unicode(s: str) -> bytes:
    """The BINUNICODE opcode for `s`."""
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    n = int(n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b  # LONG1
