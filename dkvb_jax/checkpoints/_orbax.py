"""Shared orbax plumbing: managers, abstract restore targets, leaf checksums, clear errors.

Orbax writes each step into a temporary directory and renames it into place only after every
item is written (and writes a ``commit_success.txt`` per item), so an interrupted save never
shows up as a step. The helpers here add the checks orbax leaves to the caller: the requested
step exists, its items are readable, and every restored array has the bytes that were saved;
and the step operations orbax lacks: a save that records the size and sha256 of every file it
wrote, so damaged files are refused before TensorStore reads them (:func:`write_step`,
:func:`check_files`), replacing an existing step atomically, and deleting steps
(:func:`purge`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from dkvb_jax import _fingerprint

TMP_MARKER = ".orbax-checkpoint-tmp"
# Step s is written into `<directory>/.dkvb-stage-<s>/s` (not a step name, so orbax ignores
# it) and renamed into place; `recover` finishes or undoes a replacement a crash interrupted.
STAGE_PREFIX = ".dkvb-stage-"
FILES = "dkvb_files.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not match what was requested."""


def check_directory(directory: Any, name: str = "directory") -> pathlib.Path:
    """`directory` as a Path; CheckpointError when it, or a folder above it, is a file."""
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(directory).__name__}.")
    path = pathlib.Path(directory)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = "is a file" if p == path else f"lies under the file {p}"
            raise CheckpointError(
                f"{name} {path} {what}, not a checkpoint folder; pass a folder path (it is "
                "created if missing)."
            )
    return path


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
            "sha256": _fingerprint.sha256(arr),
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


def _is_primary() -> bool:
    return ocp.multihost.process_index() == 0


def _barrier(name: str, directory: pathlib.Path) -> None:
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(f"dkvb_jax:{name}:{directory}")


def recover(directory: pathlib.Path) -> None:
    """Finishes or undoes step writes that a crash interrupted, and drops their staging.

    A staged step is complete once its file list (:data:`FILES`) is written, and only then is
    an old step it replaces moved aside (to ``old`` in the staging folder). So when the
    target step is missing and ``old`` exists, the crash fell between the two renames of a
    replacement: the complete new step goes in (or, if it is incomplete, the old one goes
    back). In every other case the staging folder is an unfinished save or an already
    replaced old step, and is deleted.
    """
    if not directory.is_dir() or not _is_primary():
        return
    for stage in sorted(directory.glob(STAGE_PREFIX + "*")):
        step = stage.name[len(STAGE_PREFIX) :]
        target, new, old = directory / step, stage / step, stage / "old"
        if not target.exists() and old.is_dir():
            os.rename(new if (new / FILES).is_file() else old, target)
        shutil.rmtree(stage)


def write_step(
    directory: pathlib.Path,
    items: tuple[str, ...],
    step: int,
    args: ocp.args.Composite,
    *,
    replace: bool,
) -> None:
    """Writes `step` of `directory` completely, then renames it into place.

    Orbax writes the step into a staging folder (itself atomically); the size and sha256 of
    every file of the ``variables`` item are then recorded beside it (:data:`FILES`, read by
    :func:`check_files`), and the finished step is renamed into `directory`. With `replace`,
    the existing step is first moved aside and deleted after the new one is in place, so a
    crash leaves the old step or the new one, and :func:`recover` (run by every reader and
    writer of the directory) completes a swap it interrupted.
    """
    stage = directory / f"{STAGE_PREFIX}{step}"
    if _is_primary() and stage.exists():
        shutil.rmtree(stage)
    _barrier("stage-start", directory)
    try:
        with manager(stage, items) as mgr:
            if not mgr.save(step, args=args, force=True):
                raise CheckpointError(f"orbax declined to write step {step} into {stage}.")
            mgr.wait_until_finished()
        _barrier("stage-written", directory)
        if _is_primary():
            _write_file_list(stage / str(step))
    except BaseException:
        # Nothing was moved: the directory is as before; drop the half-written step.
        if _is_primary():
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if _is_primary():
        if replace:
            os.rename(directory / str(step), stage / "old")
        move_into_place(stage / str(step), directory / str(step))
        shutil.rmtree(stage)
    _barrier("stage-done", directory)


def move_into_place(new: pathlib.Path, target: pathlib.Path) -> None:
    """The commit of :func:`write_step`: one rename on the same file system."""
    os.rename(new, target)


def _write_file_list(step_dir: pathlib.Path) -> None:
    root = step_dir / "variables"
    files = {
        str(p.relative_to(step_dir)): {
            "size": p.stat().st_size,
            "sha256": _fingerprint.file_sha256(p),
        }
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    tmp = step_dir / (FILES + ".tmp")
    tmp.write_text(json.dumps(files, indent=1))
    os.rename(tmp, step_dir / FILES)


def check_files(step_dir: pathlib.Path, *, digests: bool) -> None:
    """Refuses a step whose variables files differ from those recorded at save time.

    Runs before TensorStore opens the files, so a damaged file gives one clear error naming it
    (TensorStore would otherwise fail deep inside its reader threads). Steps saved before the
    file list existed are not checked here.
    """
    listing = step_dir / FILES
    if not listing.is_file():
        return
    try:
        files = json.loads(listing.read_text())
    except ValueError as e:
        raise CheckpointError(
            f"Checkpoint {step_dir} is corrupt: {listing} is not JSON ({e})."
        ) from e
    for rel, want in files.items():
        path = step_dir / rel
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != want["size"]:
            problem = f"has {path.stat().st_size} bytes, {want['size']} were saved"
        elif digests and _fingerprint.file_sha256(path) != want["sha256"]:
            problem = "has changed since it was saved (sha256 differs)"
        else:
            continue
        raise CheckpointError(
            f"Checkpoint {step_dir} is truncated or corrupt: its file {rel} {problem}. "
            "Restore another step or re-save."
        )


def purge(mgr: ocp.CheckpointManager, directory: pathlib.Path, steps: list[int]) -> list[int]:
    """Deletes `steps` (every one must exist) and returns them; orbax removes each folder."""
    for step in steps:
        mgr.delete(step)
    mgr.reload()
    left = sorted(set(steps) & set(mgr.all_steps()))
    if left:
        raise CheckpointError(f"Steps {left} of {directory} could not be deleted.")
    return sorted(steps)


def _from_orbax(unraisable: Any) -> bool:
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


@contextlib.contextmanager
def read_errors(
    where: pathlib.Path, what: str, hint: str = "Restore another step or re-save."
) -> Iterator[None]:
    """Turns any failure of an orbax read into one short CheckpointError about `where`.

    When one array of a damaged checkpoint fails to read, orbax abandons the other read
    coroutines; they raise again while being finalised, and Python prints each of those
    ("Exception ignored in: <coroutine ...>", with a full TensorStore spec) to stderr. Those
    repeat the error raised here, so they are dropped while the read runs and its garbage is
    collected; every other unraisable exception still reaches the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _from_orbax(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # orbax and tensorstore raise many types for damaged files
        raise CheckpointError(
            f"Checkpoint {where} is truncated or corrupt: {what} cannot be read "
            f"({_short_reason(e)}). {hint}"
        ) from e
    finally:
        gc.collect()  # finalise the abandoned coroutines while the filter is installed
        sys.unraisablehook = previous


def _short_reason(error: BaseException) -> str:
    """The innermost cause's first line, without orbax's TensorStore spec dump."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).split(" See full TensorStore details")[0].strip().splitlines()
    return f"{type(error).__name__}: {(text[0] if text else '')[:300]}"
