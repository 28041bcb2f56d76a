"""PyTorch state dicts without torch: reading `.safetensors` / zip `.pt` and mapping onto Flax trees.

These file formats are read into `dict[str, np.ndarray]`:

* `.safetensors`, through the safetensors NumPy API when it is installed (the `safetensors`
  extra), otherwise directly (bfloat16 is read through `ml_dtypes`).
* The zip format `torch.save` has written since PyTorch 1.6 (`.pt`, `.pth`, `.bin`), with
  weights-only semantics and without importing torch: the pickle in `<archive>/data.pkl` is read
  by a restricted unpickler that admits only the tensor-rebuild functions, storage types, dtypes
  and `OrderedDict`; anything else (`os.system`, a model class, a TorchScript module) is refused
  before it is called. Tensor bytes come from the archive's `data/<key>` entries.
* The legacy (pre-1.6) `torch.save` format, through `dkvb_jax.encoders.torch_legacy`.

`torch_to_flax` then fills a Flax variables tree from such a dict one-to-one: every Flax leaf must
be found with the right shape and every source key must be used (or explicitly ignored), else a
`StateDictMismatchError` lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from dkvb_jax.encoders import _weights

StateDict = dict[str, np.ndarray]
PathLike = str | os.PathLike[str]

__all__ = [
    "StateDict",
    "StateDictMismatchError",
    "load_state_dict",
    "load_safetensors",
    "load_torch_zip",
    "save_torch_zip",
    "torch_to_flax",
    "flax_leaf_to_torch_key",
    "init_shapes",
    "write_torch_zip_raw",
]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Legacy (pre-1.6) torch.save output: a protocol-2 pickle whose first object is this magic long.
_LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# data.pkl of a zip torch.save holds tensor metadata only (~100 bytes per tensor), so this is
# far above any real model and bounds what a hostile archive can make us decompress.
MAX_PICKLE_BYTES = 64 << 20


class StateDictMismatchError(ValueError):
    """A state dict does not match the architecture it is being loaded into."""


# --------------------------------------------------------------------------------------------
# Loading.


def load_state_dict(path: PathLike) -> StateDict:
    """Reads a PyTorch state dict from `.safetensors` or a `torch.save` file into NumPy arrays.

    The format is detected from the file's first bytes, not its suffix. A checkpoint that wraps
    the state dict under one of `'state_dict'`, `'model'`, `'model_state_dict'` is unwrapped, and a
    `'module.'` prefix shared by every key (left by `nn.DataParallel`) is stripped.

    Args:
      path: the checkpoint file.

    Returns:
      `{name: array}` with the dtypes stored in the file (bfloat16 as `ml_dtypes.bfloat16`).

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: unknown, TorchScript, truncated or corrupt file, or a pickle that asks
        for anything but tensors and dicts.
    """
    path = _check_file(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in _ZIP_MAGIC:
        raw = load_torch_zip(path)
    elif _looks_like_safetensors(head):
        raw = load_safetensors(path)
    elif head.startswith(_LEGACY_TORCH_PREFIX):
        # Pre-1.6 torch.save (e.g. older torchvision model-zoo files): its own restricted reader.
        from dkvb_jax.encoders.torch_legacy import load_legacy

        try:
            raw = load_legacy(path)
        except pickle.UnpicklingError as e:
            raise ValueError(f"checkpoint {str(path)!r} (legacy torch format): {e}") from e
    else:
        raise ValueError(
            f"checkpoint {str(path)!r} is neither a .safetensors file nor a zip-format torch.save "
            f"file (first bytes {head[:8]!r}); the file may be truncated, or another format."
        )
    return _unwrap(raw, path)


def load_safetensors(path: PathLike) -> StateDict:
    """Reads every tensor of a `.safetensors` file as NumPy (bfloat16 via `ml_dtypes`).

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is truncated or its header is corrupt.
    """
    path = _check_file(path)
    try:
        # An optional extra: the format is simple enough to read directly without it.
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ModuleNotFoundError:
        return _read_safetensors_raw(path)
    try:
        return load_file(path)
    except SafetensorError as e:
        # The NumPy API has no bfloat16; read those files through the (tiny) format ourselves.
        if "BF16" not in str(e) and "bf16" not in str(e).lower():
            raise ValueError(
                f"checkpoint {str(path)!r} is not a readable .safetensors file ({e}); it may be "
                "truncated or corrupt: download or export it again."
            ) from e
    except (OSError, ValueError) as e:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a readable .safetensors file ({e}); it may be "
            "truncated or corrupt: download or export it again."
        ) from e
    return _read_safetensors_raw(path)


def load_torch_zip(path: PathLike) -> dict[str, Any]:
    """Reads the object saved by zip-format `torch.save` with weights-only semantics, no torch.

    Tensors become NumPy arrays; dicts, lists, tuples and scalars pass through. Nothing is called
    but the tensor-rebuild functions and `OrderedDict`.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: not a torch zip archive, a TorchScript archive, truncated or corrupt storage,
        or a pickle that references anything outside the allow-list.
    """
    path = _check_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkl) != 1:
                raise ValueError(
                    f"checkpoint {str(path)!r} is a zip file but not a torch.save archive "
                    f"(expected one '<archive>/data.pkl' entry, found {len(pkl)})."
                )
            prefix = pkl[0][: -len("data.pkl")]
            if any(n.startswith(prefix + "code/") or n == prefix + "constants.pkl" for n in names):
                raise ValueError(
                    f"checkpoint {str(path)!r} is a TorchScript archive (e.g. OpenAI's original "
                    "CLIP .pt files), which holds code, not just weights. Export its weights once "
                    "with torch: torch.save(torch.jit.load(path, map_location='cpu')"
                    ".state_dict(), 'weights.pt'), or use open_clip's .safetensors weights."
                )
            byteorder = prefix + "byteorder"
            if byteorder in names and zf.read(byteorder).strip() not in (b"", b"little"):
                raise ValueError(
                    f"checkpoint {str(path)!r} was saved big-endian; re-save it on a "
                    "little-endian machine."
                )
            pkl_size = zf.getinfo(pkl[0]).file_size
            if pkl_size > MAX_PICKLE_BYTES:
                raise ValueError(
                    f"checkpoint {str(path)!r}: its data.pkl declares {pkl_size} bytes, more than "
                    f"MAX_PICKLE_BYTES={MAX_PICKLE_BYTES}; a state dict's pickle holds names and "
                    "shapes only (the tensors are separate entries): the file is corrupt or hostile."
                )
            unpickler = _WeightsOnlyUnpickler(io.BytesIO(zf.read(pkl[0])), zf, prefix, path)
            try:
                return unpickler.load()
            except (pickle.UnpicklingError, ValueError):
                raise
            except Exception as e:  # a malformed pickle fails in arbitrary ways
                raise pickle.UnpicklingError(
                    f"malformed data.pkl ({type(e).__name__}: {e}); the file is corrupt"
                ) from e
    except (zipfile.BadZipFile, EOFError, struct.error, zipfile.LargeZipFile) as e:
        raise ValueError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({type(e).__name__}: {e}); "
            "download or save it again."
        ) from e
    except pickle.UnpicklingError as e:
        raise ValueError(f"checkpoint {str(path)!r}: {e}") from e


def _check_file(path: PathLike) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a str or os.PathLike, got {type(path).__name__}.")
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint_path: no file at {str(path)!r}. Pass the path of a .safetensors or "
            "torch.save (.pt/.pth) state dict."
        )
    return path


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{"


def _unwrap(obj: Any, path: pathlib.Path) -> StateDict:
    if isinstance(obj, Mapping) and not _is_flat_arrays(obj):
        inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if inner:
            obj = obj[inner[0]]
    if not isinstance(obj, Mapping) or not _is_flat_arrays(obj):
        kinds = (
            sorted({type(v).__name__ for v in obj.values()})
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise ValueError(
            f"checkpoint {str(path)!r} does not hold a state dict (a flat mapping from names to "
            f"tensors); found {kinds}. Save model.state_dict() rather than the model or optimiser."
        )
    out = {str(k): np.asarray(v) for k, v in obj.items()}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _is_flat_arrays(obj: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors_raw(path: pathlib.Path) -> StateDict:
    """Reads the safetensors layout directly: u64 header size, JSON header, raw little-endian bytes."""
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = memoryview(data)[8 + n :]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            start, end = info["data_offsets"]
            if end > len(body) or end - start != dtype.itemsize * int(np.prod(info["shape"])):
                raise ValueError(f"tensor {name!r} runs past the end of the file")
            out[name] = np.frombuffer(body[start:end], dtype).reshape(info["shape"]).copy()
        return out
    except (struct.error, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a readable .safetensors file ({e}); it may be "
            "truncated or corrupt: download or export it again."
        ) from e


# --------------------------------------------------------------------------------------------
# The restricted unpickler.


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only remembers the element dtype."""

    def __init__(self, name: str, dtype: Any):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TorchType:
    """Stands in for `torch.Tensor` / `torch.nn.Parameter` in `_rebuild_from_type_v2`."""

    def __init__(self, name: str):
        self.name = name


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64,
    "double": np.float64,
    "float32": np.float32,
    "float": np.float32,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def _rebuild_tensor(storage, storage_offset, size, stride):
    array = storage  # a 1-D array of the storage's dtype, from persistent_load
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    storage_offset = int(storage_offset)
    _weights.check_tensor_view(size, stride, storage_offset, array.size)
    view = np.lib.stride_tricks.as_strided(
        array[storage_offset:] if array.size else array,
        shape=size,
        strides=tuple(s * array.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # own the memory, drop the view of the whole storage


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    del requires_grad, backward_hooks, metadata
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    del requires_grad, backward_hooks, metadata
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 got a non-dtype {dtype!r}")
    return _rebuild_tensor(storage.view(dtype), storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    del requires_grad, backward_hooks, state
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError(f"_rebuild_parameter got {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    del state  # Python attributes set on a tensor subclass: not weights.
    if not isinstance(new_type, _TorchType) or func not in _REBUILD_FUNCTIONS:
        raise pickle.UnpicklingError(f"refusing to rebuild a tensor of type {new_type!r}")
    return func(*args)


_REBUILD_FUNCTIONS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TorchType("Tensor"),
    ("torch._tensor", "Tensor"): _TorchType("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TorchType("Parameter"),
    ("torch", "Size"): tuple,
    **{("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", np.uint8),
    **{("torch", n): np.dtype(d) for n, d in _TORCH_DTYPES.items()},
}


class _WeightsOnlyUnpickler(pickle._Unpickler):  # the Python implementation: BUILD is overridable
    """Unpickles tensors, dicts and scalars; refuses every other global and BUILD on non-dicts."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, path: pathlib.Path):
        super().__init__(file)
        self._zf, self._prefix, self._path = zf, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}': only plain tensors and dicts are read "
                "(weights-only). Save model.state_dict() rather than a model or other objects."
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            entry = f"{self._prefix}data/{key}"
            try:
                info = self._zf.getinfo(entry)
            except KeyError:
                raise pickle.UnpicklingError(
                    f"storage entry {entry!r} is missing: the file is truncated or corrupt"
                ) from None
            dtype = storage_type.dtype
            # Sizes are compared from the zip directory before reading: the read is then
            # bounded by what the pickle declares, however well the entry compresses.
            want = int(numel) * dtype.itemsize
            if info.file_size != want:
                raise pickle.UnpicklingError(
                    f"storage {entry!r} has {info.file_size} bytes, expected {numel} x "
                    f"{dtype.itemsize}: the file is truncated or corrupt"
                )
            raw = self._zf.read(info)
            if len(raw) != want:
                raise pickle.UnpicklingError(
                    f"storage {entry!r} has {len(raw)} bytes, expected {numel} x "
                    f"{dtype.itemsize}: the file is truncated or corrupt"
                )
            self._storages[key] = np.frombuffer(raw, dtype)
        return self._storages[key]

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        # Only OrderedDict state (the `_metadata` torch attaches to state dicts) is accepted, and
        # dropped: setting attributes on anything else is how pickles run code.
        if not (isinstance(inst, collections.OrderedDict) and isinstance(state, dict)):
            raise pickle.UnpicklingError(
                f"refusing to set state on a {type(inst).__name__} (weights-only)"
            )

    dispatch[pickle.BUILD[0]] = load_build


# --------------------------------------------------------------------------------------------
# Writing (fixtures, and torch-free export).


def save_torch_zip(state_dict: Mapping[str, np.ndarray], path: PathLike) -> None:
    """Writes `{name: array}` in zip-format `torch.save` layout, without torch.

    The file holds an `OrderedDict` of contiguous tensors, one storage each, and loads with
    `torch.load(path, weights_only=True)` as well as with `load_state_dict`. Entries are stored
    uncompressed and 64-byte aligned, as torch writes them.

    Args:
      state_dict: names to arrays (float64/32/16, bfloat16, int64/32/16/8, uint8, bool).
      path: the output file; its stem names the archive folder, as with torch.
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
    path: PathLike,
) -> None:
    """Writes a torch zip archive whose tensors are views `(storage_key, offset, size, stride)`.

    Lets tests build what torch writes for shared storage, offsets and non-contiguous strides.
    """
    storage_names = {np.dtype(d): n for n, d in _STORAGE_DTYPES.items() if n != "UntypedStorage"}
    out = bytearray(b"\x80\x02")  # PROTO 2
    out += _global("collections", "OrderedDict") + b")R"  # EMPTY_TUPLE REDUCE
    out += b"("  # MARK
    for name, (key, offset, size, stride) in tensors.items():
        storage = storages[key]
        out += _unicode(name)
        out += _global("torch._utils", "_rebuild_tensor_v2") + b"("  # MARK for the args tuple
        out += b"(" + _unicode("storage") + _global("torch", storage_names[storage.dtype])
        out += _unicode(key) + _unicode("cpu") + _int(storage.size) + b"tQ"  # TUPLE BINPERSID
        out += _int(offset)
        out += b"(" + b"".join(_int(s) for s in size) + b"t"
        out += b"(" + b"".join(_int(s) for s in stride) + b"t"
        out += b"\x89"  # NEWFALSE (requires_grad)
        out += _global("collections", "OrderedDict") + b")R"  # backward_hooks
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


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    n = int(n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b  # LONG1


# --------------------------------------------------------------------------------------------
# Mapping onto Flax.


def flax_leaf_to_torch_key(
    path: tuple[str, ...],
) -> tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[tuple[int, ...]], tuple[int, ...]]]:
    """The torch name of a Flax leaf, and how to convert its value and shape.

    Flax module names mirror the torch module path (`layer1/0/conv1` <-> `layer1.0.conv1`), so
    only leaf names differ: `kernel` <-> `weight` (OIHW -> HWIO for convs, transposed for linears),
    `scale` <-> `weight`, BatchNorm statistics `mean`/`var` <-> `running_mean`/`running_var`, and
    a Dense named `in_proj` <-> `nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias`.

    Args:
      path: `(collection, *module_names, leaf_name)` as in `flax.traverse_util.flatten_dict`.

    Returns:
      `(torch_key, to_flax, torch_shape)`: `to_flax` converts the torch array to the Flax layout,
      `torch_shape` maps the Flax leaf's shape to the shape expected in the state dict.
    """
    collection, *modules, leaf = path
    identity = (lambda a: a, lambda s: tuple(s))
    if collection == "batch_stats" and leaf in ("mean", "var"):
        return ".".join([*modules, f"running_{leaf}"]), *identity
    if collection != "params":
        raise ValueError(f"no torch equivalent for variable collection {collection!r} ({path})")
    if modules and modules[-1] == "in_proj" and leaf in ("kernel", "bias"):
        key = ".".join([*modules[:-1], f"in_proj_{'weight' if leaf == 'kernel' else 'bias'}"])
        if leaf == "kernel":
            return key, lambda a: a.T, lambda s: tuple(s)[::-1]
        return key, *identity
    if leaf == "kernel":
        key = ".".join([*modules, "weight"])
        # torch conv OIHW -> flax HWIO; torch linear [out, in] -> flax [in, out].
        return (
            key,
            _to_flax_kernel,
            lambda s: (s[3], s[2], s[0], s[1]) if len(s) == 4 else tuple(s)[::-1],
        )
    if leaf == "scale":
        return ".".join([*modules, "weight"]), *identity
    return ".".join([*modules, leaf]), *identity


def _to_flax_kernel(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    *,
    prefix: str = "",
    ignore: Callable[[str], bool] = lambda key: False,
    architecture: str = "the model",
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """Fills a Flax variables tree from a torch state dict, one-to-one.

    Args:
      state_dict: `{torch_name: array}` as from `load_state_dict`.
      target: the variables tree to fill (`jax.eval_shape(model.init, ...)` or real arrays);
        only its structure and leaf shapes are used.
      prefix: prepended to every torch name derived from the tree (e.g. `'visual.'`).
      ignore: source keys for which this returns True may be left unused (e.g. BatchNorm's
        `num_batches_tracked`, or a CLIP checkpoint's text tower).
      architecture: named in error messages.
      dtype: dtype of the returned leaves.

    Returns:
      A variables tree of the same structure as `target`, holding `jax.Array`s.

    Raises:
      StateDictMismatchError: missing, unexpected or mis-shaped keys, or non-float weights.
    """
    flat = traverse_util.flatten_dict(dict(target))
    missing, misshaped, out, used = [], [], {}, set()
    for path, leaf in flat.items():
        key, to_flax, torch_shape = flax_leaf_to_torch_key(path)
        key = prefix + key
        want = torch_shape(leaf.shape)
        if key not in state_dict:
            missing.append(f"{key} {want}")
            continue
        used.add(key)
        value = np.asarray(state_dict[key])
        if value.shape != want:
            misshaped.append(f"{key}: expected {want}, got {value.shape}")
            continue
        if not (np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16):
            misshaped.append(f"{key}: expected floating point, got {value.dtype}")
            continue
        out[path] = jnp.asarray(to_flax(value).astype(np.float32), dtype)
    unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
    missing.sort(), misshaped.sort()
    if missing or misshaped or unexpected:
        parts = [
            f"{architecture}: the state dict does not match the architecture "
            f"({len(flat)} expected tensors, {len(state_dict)} in the file)."
        ]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape or dtype", misshaped),
        ):
            if items:
                shown = "; ".join(items[:8]) + (
                    f"; ... and {len(items) - 8} more" if len(items) > 8 else ""
                )
                parts.append(f"{title} ({len(items)}): {shown}")
        parts.append("Check that the checkpoint and the config describe the same architecture.")
        raise StateDictMismatchError("\n".join(parts))
    return traverse_util.unflatten_dict(out)


def init_shapes(module: Any, *example_args: Any) -> dict[str, Any]:
    """Shapes of `module.init(rng, *example_args)` without computing anything."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_args))
