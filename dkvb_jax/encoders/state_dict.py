"""PyTorch state dicts without torch: reading `.safetensors` / zip `.pt` and mapping onto Flax trees.

These file formats are read into `dict[str, np.ndarray]`:

* `.safetensors`, through the safetensors NumPy API when it is installed (the `safetensors`
  extra), otherwise directly (bfloat16 is read through `ml_dtypes`).
* The zip format `torch.save` has written since PyTorch 1.6 (`.pt`, `.pth`, `.bin`), with
  weights-only semantics and without importing torch: the pickle in `<archive>/data.pkl` is read
  by the restricted unpickler of `dkvb_jax.encoders._torch_pickle`, which admits only the
  tensor-rebuild functions, storage types, dtypes and `OrderedDict`; anything else (`os.system`,
  a model class, a TorchScript module) is refused before it is called. Tensor bytes come from the
  archive's `data/<key>` entries.
* The legacy (pre-1.6) `torch.save` format, through `dkvb_jax.encoders.torch_legacy` (the same
  unpickler).

`torch_to_flax` then fills a Flax variables tree from such a dict one-to-one: every Flax leaf must
be found with the right shape and every source key must be used (or explicitly ignored), else a
`StateDictMismatchError` lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

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

from dkvb_jax.encoders import _torch_pickle

StateDict = dict[str, np.ndarray]
PathLike = str | os.PathLike[str]

__all__ = [
    "StateDict",
    "StateDictMismatchError",
    "load_state_dict",
    "load_safetensors",
    "load_torch_zip",
    "torch_to_flax",
    "flax_leaf_to_torch_key",
    "init_shapes",
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
            obj = _torch_pickle.load(io.BytesIO(zf.read(pkl[0])))
            refs = _torch_pickle.storage_refs(obj)
            storages = {key: _read_zip_storage(zf, prefix, ref) for key, ref in refs.items()}
            return _torch_pickle.materialise(obj, storages, str(path))
    except (zipfile.BadZipFile, EOFError, struct.error, zipfile.LargeZipFile) as e:
        raise ValueError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({type(e).__name__}: {e}); "
            "download or save it again."
        ) from e
    except pickle.UnpicklingError as e:
        raise ValueError(f"checkpoint {str(path)!r}: {e}") from e


def _read_zip_storage(
    zf: zipfile.ZipFile, prefix: str, ref: _torch_pickle.StorageRef
) -> np.ndarray:
    """The elements of one storage, from the archive entry `<prefix>data/<key>`."""
    entry = f"{prefix}data/{ref.key}"
    try:
        info = zf.getinfo(entry)
    except KeyError:
        raise pickle.UnpicklingError(
            f"storage entry {entry!r} is missing: the file is truncated or corrupt"
        ) from None
    # Sizes are compared from the zip directory before reading: the read is then bounded by what
    # the pickle declares, however well the entry compresses.
    want = ref.numel * ref.dtype.itemsize
    if info.file_size != want:
        raise pickle.UnpicklingError(_storage_size_message(entry, info.file_size, ref))
    raw = zf.read(info)
    if len(raw) != want:
        raise pickle.UnpicklingError(_storage_size_message(entry, len(raw), ref))
    return np.frombuffer(raw, ref.dtype)


def _storage_size_message(entry: str, size: int, ref: _torch_pickle.StorageRef) -> str:
    return (
        f"storage {entry!r} has {size} bytes, expected {ref.numel} x {ref.dtype.itemsize}: "
        "the file is truncated or corrupt"
    )


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
