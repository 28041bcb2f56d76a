"""Shared orbax plumbing: managers, abstract restore targets, leaf checksums, clear errors.

Orbax writes each step into a temporary directory and renames it into place only after every
item is written (and writes a ``commit_success.txt`` per item), so an interrupted save never
shows up as a step. The helpers here add the checks orbax leaves to the caller: the requested
step exists, its items are readable, and every restored array has the bytes that were saved.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not match what was requested."""


def manager(
    directory: str | pathlib.Path,
    item_names: tuple[str, ...],
    *,
    max_to_keep: int | None = None,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """A synchronous CheckpointManager (a save returns only once the step is committed)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
        # A stale temporary directory is an interrupted save: remove it rather than trip on it.
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(), options=options, item_names=item_names
    )


def incomplete_saves(directory: pathlib.Path) -> list[str]:
    """Names of temporary (never finalised) step directories left by interrupted saves."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if TMP_MARKER in p.name)


def resolve_step(mgr: ocp.CheckpointManager, directory: pathlib.Path, step: int | None) -> int:
    """The requested step, or the latest; raises CheckpointError when there is none."""
    steps = mgr.all_steps()
    if not steps:
        partial = incomplete_saves(directory)
        hint = (
            f" Found only incomplete saves {partial}: a save was interrupted before it was "
            "finalised, so there is nothing valid to restore."
            if partial
            else ""
        )
        raise CheckpointError(f"No complete checkpoint in {directory}.{hint}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(
            f"Step {step} is not in {directory}; available steps: {sorted(steps)}."
        )
    return step


def check_committed(directory: pathlib.Path, step: int, items: tuple[str, ...]) -> None:
    """Refuses a step whose item directories or commit markers are missing (truncated copy)."""
    for item in items:
        item_dir = directory / str(step) / item
        if not (item_dir / "commit_success.txt").exists():
            raise CheckpointError(
                f"Checkpoint {directory / str(step)} is truncated or corrupt: item '{item}' is "
                f"missing or was not committed ({item_dir}). Restore another step or re-save."
            )


def checksums(tree: Any) -> dict[str, dict] | None:
    """Per-leaf `{path: {shape, dtype, sha256}}`; None when some leaf is not fully addressable
    (multi-host arrays: hashing them would need a gather, orbax's own checks apply instead)."""
    leaves = traverse_util.flatten_dict(tree, sep="/")
    if not all(getattr(v, "is_fully_addressable", True) for v in leaves.values()):
        return None
    out = {}
    for path, leaf in leaves.items():
        arr = np.ascontiguousarray(np.asarray(leaf))
        out[path] = {
            "shape": list(arr.shape),
            "dtype": arr.dtype.str,
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    return out


def leaf_specs(tree: Any) -> dict[str, dict]:
    """Per-leaf `{path: {shape, dtype}}` of a pytree of arrays (no data read)."""
    return {
        path: {"shape": list(leaf.shape), "dtype": np.dtype(leaf.dtype).str}
        for path, leaf in traverse_util.flatten_dict(tree, sep="/").items()
    }


def abstract_tree(specs: dict[str, dict], sharding_for: Callable[[str, tuple], Any]) -> dict:
    """Nested dict of `jax.ShapeDtypeStruct` with the sharding `sharding_for(path, shape)`."""
    flat = {
        path: jax.ShapeDtypeStruct(
            tuple(s["shape"]), np.dtype(s["dtype"]), sharding=sharding_for(path, tuple(s["shape"]))
        )
        for path, s in specs.items()
    }
    return traverse_util.unflatten_dict(flat, sep="/")


def verify_checksums(tree: Any, expected: dict[str, dict] | None, where: pathlib.Path) -> None:
    """Raises CheckpointError naming the first leaf whose restored bytes differ from the save."""
    if not expected:
        return
    got = checksums(tree)
    if got is None:
        return
    for path, exp in expected.items():
        if got.get(path) != exp:
            raise CheckpointError(
                f"Checkpoint {where} is corrupt: variable '{path}' does not match the checksum "
                "recorded at save time. Restore another step or re-save."
            )


def jsonable(value: Any, name: str) -> Any:
    """Round-trips `value` through JSON, raising a TypeError naming `name` if it cannot."""
    try:
        return json.loads(json.dumps(value))
    except TypeError as e:
        raise TypeError(f"{name} must be JSON-serialisable: {e}") from None
