"""Shared helpers for encoder weights: shipped assets, npz files and tree checks."""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"


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
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {str(path)!r}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"{what}: {str(path)!r} is truncated or not a valid .npz file ({type(e).__name__}: "
            f"{e}); re-create it with the converter."
        ) from e


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
