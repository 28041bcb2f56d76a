"""Shared helpers for encoder weights: shipped assets, npz files and tree checks."""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from dkvb_jax.errors import InputError

ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"
NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive, or an empty one (savez of nothing)


def asset_path(filename: str) -> pathlib.Path:
    """Returns the path of a file shipped in `dkvb_jax/assets`, failing clearly if absent."""
    path = ASSETS_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped asset {filename!r} is missing from {ASSETS_DIR}; the installation is "
            "incomplete (reinstall dkvb_jax, or check that package_data includes assets/*)."
        )
    return path


def load_npz(path: str | os.PathLike[str], *, what: str) -> dict[str, np.ndarray]:
    """Reads every array of an `.npz` file eagerly, with clear errors.

    Args:
      path: the `.npz` file.
      what: a short description used in error messages (e.g. 'MobileNetV1 weights').

    Returns:
      A dict from array name to array. Pickled object arrays are never loaded.

    Raises:
      FileNotFoundError: no file at `path`.
      InputError: not an `.npz` archive, truncated, or holding an object (pickled) array.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {str(path)!r}.")
    with open(path, "rb") as f:
        head = f.read(6)
    # np.load on anything but a zip tries a .npy or a pickle, and its refusal of the pickle
    # ("allow_pickle=False") reads like advice to enable unsafe loading.
    if head[:4] not in NPZ_MAGIC:
        kind = "a single .npy array" if head.startswith(b"\x93NUMPY") else f"starts with {head!r}"
        raise InputError(
            f"{what}: {str(path)!r} is not an .npz archive ({kind}); write one with "
            "numpy.savez(path, name=array, ...)."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise InputError(
                f"{what}: {str(path)!r} holds an object (pickled) array, which is never loaded "
                "(unpickling a file can run code); store numeric or string arrays instead."
            ) from e
        raise InputError(
            f"{what}: {str(path)!r} is truncated or not a valid .npz file ({type(e).__name__}: "
            f"{e}); re-create it."
        ) from e
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise InputError(
            f"{what}: {str(path)!r} is truncated or not a valid .npz file ({type(e).__name__}: "
            f"{e}); re-create it."
        ) from e


def check_tensor_view(
    size: tuple[int, ...], stride: tuple[int, ...], offset: int, storage_numel: int
) -> None:
    """Checks a pickled tensor `(size, stride, offset)` is a view its storage can back.

    Refused before anything is allocated: negative or mismatched sizes/strides, an offset
    outside the storage, an element past its end, and more elements than the storage holds
    (zero strides would let a few hundred bytes of file expand to gigabytes on load).

    Raises:
      pickle.UnpicklingError: the view is malformed; the caller names the file.
    """
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride)) or offset < 0:
        raise pickle.UnpicklingError(
            f"malformed tensor: size {size}, stride {stride}, offset {offset}"
        )
    numel = math.prod(size)
    if numel == 0:
        return
    if numel > storage_numel:
        raise pickle.UnpicklingError(
            f"tensor of size {size} (stride {stride}) declares {numel} elements but its storage "
            f"holds {storage_numel}: the file is corrupt or hostile (it would expand far beyond "
            "its own size); refused before allocating"
        )
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage_numel:
        raise pickle.UnpicklingError(
            f"tensor of size {size} at offset {offset} runs past its storage of "
            f"{storage_numel} elements: the file is truncated or corrupt"
        )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens a nested mapping into {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten`."""
    tree: dict[str, Any] = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def check_tree_shapes(got: Mapping[str, Any], expected: Mapping[str, Any], *, what: str) -> None:
    """Raises ValueError naming every missing, unexpected or mis-shaped leaf.

    Args:
      got: a nested mapping of arrays (e.g. Flax variables).
      expected: the same structure with arrays or `jax.ShapeDtypeStruct` leaves.
      what: a short description used in the error message.
    """
    if not isinstance(got, Mapping):
        raise TypeError(f"{what}: expected a nested dict of arrays, got {type(got).__name__}.")
    g, e = flatten(got), flatten(expected)
    missing = sorted(set(e) - set(g))
    extra = sorted(set(g) - set(e))
    bad = sorted(
        f"{k}: got {tuple(np.shape(g[k]))}, expected {tuple(e[k].shape)}"
        for k in set(g) & set(e)
        if tuple(np.shape(g[k])) != tuple(e[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    if bad:
        problems.append(f"wrong shape {bad[:8]}{' ...' if len(bad) > 8 else ''}")
    if problems:
        raise ValueError(
            f"{what} do not match the architecture ({'; '.join(problems)}); check that the weights "
            "were converted for this model and depth."
        )
