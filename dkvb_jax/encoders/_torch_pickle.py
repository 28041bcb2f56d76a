"""The one restricted unpickler for both `torch.save` formats (zip since PyTorch 1.6, and legacy).

Both formats pickle the saved object with tensors as calls to `torch._utils._rebuild_tensor*`
on storages named by persistent ids `('storage', StorageType, key, location, numel[, view])`;
they differ only in where the storage bytes live (zip entries `data/<key>`, or raw records after
the pickle). So unpickling is shared and returns `TensorRef`s; each format's reader then reads
the referenced storages (`storage_refs`) and builds the arrays (`materialise`).

`find_class` admits only the names a state dict needs (`collections.OrderedDict`, the tensor
rebuild functions, storage types, dtypes, `torch.Size`, `torch.Tensor` / `nn.Parameter` as the
type of `_rebuild_from_type_v2`), all mapped to local stand-ins; anything else (`os.system`, a
model class, `numpy` internals) raises `UnsafePickleError` before it is called. BUILD is refused
on everything but an `OrderedDict` (setting attributes is how pickles run code).
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
from collections.abc import Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from dkvb_jax.encoders import _weights

STORAGE_DTYPES: dict[str, np.dtype] = {
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
    "UntypedStorage": np.dtype("u1"),
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


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global outside the allow-list; nothing from it was executed."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _TorchType:
    """Stand-in for `torch.Tensor` / `torch.nn.Parameter` in `_rebuild_from_type_v2`."""

    name: str


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A storage named by the pickle: `numel` elements of `dtype`, bytes read by the format."""

    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A view `(offset, size, stride)`, in elements of `dtype`, of a storage read later."""

    storage: StorageRef
    dtype: np.dtype
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, dtype=None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor without a storage reference; not a state dict.")
    dtype = storage.dtype if dtype is None else dtype
    nbytes = storage.numel * storage.dtype.itemsize
    if nbytes % dtype.itemsize:
        raise pickle.UnpicklingError(
            f"storage {storage.key!r} of {nbytes} bytes cannot hold {dtype} elements"
        )
    ref = TensorRef(
        storage, dtype, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
    )
    # Checked against the declared size before any storage byte is read; the format's reader
    # then checks that the file holds that many bytes.
    _weights.check_tensor_view(ref.size, ref.stride, ref.offset, nbytes // dtype.itemsize)
    return ref


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> TensorRef:
    del requires_grad, backward_hooks, metadata  # Irrelevant for frozen weights.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
) -> TensorRef:
    del requires_grad, backward_hooks, metadata
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 got a non-dtype {dtype!r}")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> TensorRef:
    del requires_grad, backward_hooks, state
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError(f"_rebuild_parameter got {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> TensorRef:
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
    **{("torch", n): _StorageType(n, d) for n, d in STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): _StorageType(
        "UntypedStorage", STORAGE_DTYPES["ByteStorage"]
    ),
    **{("torch", n): np.dtype(d) for n, d in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle._Unpickler):  # the Python implementation: BUILD is overridable
    """Resolves only `_ALLOWED_GLOBALS` and storage persistent ids; BUILD only on OrderedDicts."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only plain tensors and dicts are "
                "read (weights-only). Save model.state_dict() rather than a model or other "
                "objects; a file that asks for more may be malicious."
            ) from None

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"persistent id names no storage type: {storage_type!r:.80}"
            )
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (pre-0.4 checkpoints) are not supported")
        return StorageRef(str(key), storage_type.dtype, int(numel))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        # Only OrderedDict state (the `_metadata` torch attaches to state dicts) is accepted, and
        # dropped.
        if not (isinstance(inst, collections.OrderedDict) and isinstance(state, dict)):
            raise pickle.UnpicklingError(
                f"refusing to set state on a {type(inst).__name__} (weights-only)"
            )

    dispatch[pickle.BUILD[0]] = load_build


def load(file: BinaryIO) -> Any:
    """Unpickles one object from `file` (left just past it), tensors as `TensorRef`s.

    Raises:
      UnsafePickleError: a global outside the allow-list (nothing was called).
      EOFError: the pickle ends early.
      pickle.UnpicklingError: anything else malformed (a corrupt pickle fails in arbitrary
        ways; they are all reported as this).
    """
    try:
        return _Unpickler(file).load()
    except (pickle.UnpicklingError, EOFError):
        raise
    except Exception as e:
        raise pickle.UnpicklingError(
            f"malformed pickle ({type(e).__name__}: {e}); the file is corrupt"
        ) from e


def storage_refs(obj: Any) -> dict[str, StorageRef]:
    """Every storage the tensors of `obj` refer to, by key."""
    out: dict[str, StorageRef] = {}

    def visit(x: Any) -> None:
        if isinstance(x, TensorRef):
            out[x.storage.key] = x.storage
        elif isinstance(x, Mapping):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    visit(obj)
    return out


def materialise(obj: Any, storages: Mapping[str, np.ndarray], source: str) -> Any:
    """`obj` with every `TensorRef` replaced by an array that owns its memory.

    Args:
      obj: as returned by `load`.
      storages: `{key: 1-D array}` of each storage's elements, in the storage's dtype, exactly
        `numel` long (the format's reader checks this against the file).
      source: names the file in errors.
    """
    if isinstance(obj, TensorRef):
        base = storages.get(obj.storage.key)
        if base is None:
            raise ValueError(f"{source}: tensor refers to missing storage {obj.storage.key!r}.")
        if 0 in obj.size:
            return np.zeros(obj.size, obj.dtype)
        # The view was checked against the storage's size when it was unpickled.
        base = base.view(obj.dtype)
        return np.lib.stride_tricks.as_strided(
            base[obj.offset :],
            shape=obj.size,
            strides=tuple(s * obj.dtype.itemsize for s in obj.stride),
            writeable=False,
        ).copy()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict(
            (k, materialise(v, storages, source)) for k, v in obj.items()
        )
    if isinstance(obj, dict):
        return {k: materialise(v, storages, source) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialise(v, storages, source) for v in obj)
    return obj
