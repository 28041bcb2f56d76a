"""Saving and restoring a whole DKVB model: configuration, encoder, variables and audit trail.

A model checkpoint is one orbax step with two items:

- ``variables``: the full variables pytree (``params`` values and decoder, ``frozen`` keys and
  projection, ``mask``), saved with ``StandardSave`` from whatever sharding it has;
- ``meta``: JSON with the format version, the :class:`DKVBConfig`, the encoder name, the audit
  records of every unlearning call applied, the provenance of the fitted parts, the steps this
  save purged, and a shape/dtype/sha256 entry per variable.

Each save of the same directory adds a step (keep the model before and after each unlearning
call, for instance), so an unlearned checkpoint carries the list of what it forgot. Every
earlier step still holds what the later ones forgot: ``purge_earlier=True`` deletes them once
the new step is committed (or :func:`purge_steps` later). Saving at a step that exists is
refused unless ``overwrite=True``, which replaces it atomically. Restoring builds the target
from the saved shapes and the requested shardings, so a checkpoint written from 8 devices
restores onto 1 device, or onto any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import Mesh, Sharding

from dkvb_jax import _validation
from dkvb_jax.checkpoints import _orbax
from dkvb_jax.checkpoints._orbax import CheckpointError
from dkvb_jax.config import DKVBConfig
from dkvb_jax.parallel import mesh as mesh_lib

FORMAT = "dkvb_jax.model"
VERSION = 1
ITEMS = ("variables", "meta")


@dataclasses.dataclass(frozen=True)
class ModelCheckpoint:
    """A restored model.

    Attributes:
      config: the model's configuration.
      variables: its variables, placed with the requested shardings.
      encoder: name of the frozen encoder whose embeddings the model reads, if recorded.
      audit: one record per unlearning call applied, oldest first (``AuditRecord`` objects when
        :mod:`dkvb_jax.unlearning.audit` can parse them, plain dicts otherwise).
      step: the checkpoint step restored.
      provenance: what the fitted parts were fitted on, as recorded at save time (an opaque
        JSON dict; None for checkpoints saved without it).
      purged_steps: the earlier steps of the directory that this step's save deleted
        (``purge_earlier=True``); empty when none were.
    """

    config: DKVBConfig
    variables: dict
    encoder: str | None
    audit: list
    step: int
    provenance: dict | None = None
    purged_steps: tuple[int, ...] = ()


def _audit_to_json(records) -> list[dict]:
    out = []
    for i, rec in enumerate(records):
        if hasattr(rec, "to_json"):
            rec = json.loads(rec.to_json())
        elif dataclasses.is_dataclass(rec) and not isinstance(rec, type):
            rec = dataclasses.asdict(rec)
        if not isinstance(rec, dict):
            raise TypeError(
                f"audit[{i}] must be an AuditRecord, a dataclass or a dict, got {type(rec).__name__}."
            )
        out.append(_orbax.jsonable(rec, f"audit[{i}]"))
    return out


def _audit_from_json(records: list[dict]) -> list:
    try:
        from dkvb_jax.unlearning.audit import AuditRecord
    except ImportError:  # The unlearning package is optional for checkpoint I/O.
        return records
    out = []
    for rec in records:
        try:
            out.append(AuditRecord.from_json(json.dumps(rec)))
        except (TypeError, ValueError):
            out.append(rec)
    return out


def save_model(
    directory: str | pathlib.Path,
    config: DKVBConfig,
    variables: dict,
    *,
    encoder: str | None = None,
    audit: list | tuple = (),
    step: int | None = None,
    max_to_keep: int | None = None,
    overwrite: bool = False,
    purge_earlier: bool = False,
    provenance: dict | None = None,
) -> int:
    """Saves a model as a step of `directory`.

    Args:
      directory: checkpoint directory (created if needed).
      config: the model's configuration.
      variables: the model's variables, on any devices/sharding. They must be exactly what
        ``DKVB(config).init`` creates (collections, leaf shapes and dtypes) and finite.
      encoder: name of the encoder the model reads (e.g. ``"mobilenet_v1"``).
      audit: audit records of the unlearning calls applied to these variables.
      step: step number; defaults to one past the latest step (0 for a new directory).
      max_to_keep: keep only the newest steps (None keeps all).
      overwrite: if `step` exists, replace it. The new step is written completely before the
        old one is swapped out, so an interrupted replacement leaves the old step or the new
        one, never neither. Without it an existing `step` is refused.
      purge_earlier: once the new step is committed, delete every earlier step of `directory`
        (they still hold what this model's unlearning forgot). The deleted steps are recorded
        in this step's metadata (:attr:`ModelCheckpoint.purged_steps`).
      provenance: JSON-serialisable description of what the fitted parts were fitted on,
        stored as is (:attr:`ModelCheckpoint.provenance`).

    Returns:
      The step written. The step becomes visible only once fully written: an interrupted save
      leaves no step that looks valid.

    Raises:
      TypeError: an argument of the wrong type (a config that is not a DKVBConfig, a
        non-JSON audit record or provenance, ...).
      ValueError: `variables` do not match `config`, or hold NaN/inf.
      CheckpointError (a ValueError): `directory` is a file, or `step` exists and `overwrite`
        is False.
    """
    if not isinstance(config, DKVBConfig):
        raise TypeError(f"config must be a DKVBConfig, got {type(config).__name__}.")
    _validation.check_variables_match(config, variables)
    if encoder is not None and not isinstance(encoder, str):
        raise TypeError(f"encoder must be a string name or None, got {type(encoder).__name__}.")
    if step is not None:
        _check_step(step)
    if max_to_keep is not None:
        _validation.check_positive_int(max_to_keep, "max_to_keep")
    for flag, value in (("overwrite", overwrite), ("purge_earlier", purge_earlier)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}.")
    if provenance is not None and not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a JSON dict or None, got {type(provenance).__name__}.")
    directory = _orbax.check_directory(directory)
    _orbax.recover(directory)
    with _orbax.manager(directory, ITEMS) as mgr:
        existing = sorted(mgr.all_steps())
        if step is None:
            step = existing[-1] + 1 if existing else 0
        elif step in existing and not overwrite:
            raise CheckpointError(
                f"Step {step} already exists in {directory}; saving there would keep the model "
                f"it holds. Pass overwrite=True to replace it, or step=None to add step "
                f"{existing[-1] + 1}."
            )
        earlier = [s for s in existing if s < step] if purge_earlier else []
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "config": config.to_dict(),
            "encoder": encoder,
            "audit": _audit_to_json(audit),
            "provenance": _orbax.jsonable(provenance, "provenance"),
            "purged_steps": earlier,
            "variables": _orbax.checksums(variables) or _orbax.leaf_specs(variables),
        }
        meta = _orbax.jsonable(meta, "checkpoint metadata")
        args = ocp.args.Composite(
            variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)
        )
        _orbax.write_step(directory, ITEMS, step, args, replace=step in existing)
        mgr.reload()
        # Only now, with the new step committed, may the earlier ones go.
        _orbax.purge(mgr, directory, earlier)
        if max_to_keep is not None:
            _orbax.purge(mgr, directory, sorted(mgr.all_steps())[:-max_to_keep])
    return step


def purge_steps(directory: str | pathlib.Path, *, keep: int | Iterable[int]) -> list[int]:
    """Deletes every step of a model checkpoint directory except `keep`; returns those deleted.

    Earlier steps hold the model as it was before later unlearning calls; deleting them is how
    forgetting reaches the disk. :func:`save_model` with ``purge_earlier=True`` does this as
    part of the save (and records it); use this for a directory saved without it.

    Raises:
      CheckpointError: a step of `keep` is not in `directory` (nothing is deleted then).
    """
    keep_set = {keep} if isinstance(keep, int | np.integer) else set(keep)
    for s in keep_set:
        _check_step(s, "keep")
    directory = _orbax.check_directory(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Checkpoint directory {directory} does not exist.")
    _orbax.recover(directory)
    with _orbax.manager(directory, ITEMS) as mgr:
        steps = sorted(mgr.all_steps())
        unknown = sorted(keep_set - set(steps))
        if unknown:
            raise CheckpointError(
                f"keep names steps {unknown} that are not in {directory} (steps: {steps}); "
                "nothing was deleted."
            )
        return _orbax.purge(mgr, directory, [s for s in steps if s not in keep_set])


def _check_step(step: Any, name: str = "step") -> None:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"{name} must be a non-negative int, got {step!r}.")


def _sharding_fn(shardings, specs: dict):
    """Maps the `shardings` argument of :func:`restore_model` to `(path, shape) -> Sharding`."""
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return lambda path, shape: one
    if isinstance(shardings, Sharding):
        return lambda path, shape: shardings
    if isinstance(shardings, Mesh):
        stubs = traverse_util.unflatten_dict(
            {
                p: jax.ShapeDtypeStruct(tuple(s["shape"]), np.dtype(s["dtype"]))
                for p, s in specs.items()
            },
            sep="/",
        )
        flat = traverse_util.flatten_dict(mesh_lib.variables_shardings(stubs, shardings), sep="/")
        return lambda path, shape: flat[path]
    flat = traverse_util.flatten_dict(shardings, sep="/") if isinstance(shardings, dict) else {}
    if set(flat) != set(specs) or not all(isinstance(v, Sharding) for v in flat.values()):
        raise TypeError(
            "shardings must be None (one local device), a Sharding, a Mesh, or a nested dict of "
            f"Shardings with the checkpoint's variable paths {sorted(specs)}."
        )
    return lambda path, shape: flat[path]


def _config_diff(saved: DKVBConfig, wanted: DKVBConfig) -> str:
    a, b = saved.to_dict(), wanted.to_dict()
    return ", ".join(f"{k}: saved {a[k]!r} != requested {b[k]!r}" for k in a if a[k] != b[k])


def read_meta(directory: str | pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """The JSON metadata of a model checkpoint step (latest by default), without its arrays."""
    directory = _open_for_reading(directory)
    if step is not None:
        _check_step(step)
    with _orbax.manager(directory, ITEMS, read_only=True) as mgr:
        step = _orbax.resolve_step(mgr, directory, step)
        _orbax.check_committed(directory, step, ITEMS)
        with _orbax.read_errors(directory / str(step), "its metadata"):
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory / str(step)} is not a dkvb_jax model checkpoint (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})."
        )
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{directory / str(step)} has format version {meta['version']}, newer than this "
            f"dkvb_jax reads ({VERSION}); upgrade dkvb_jax."
        )
    return step, meta


def _open_for_reading(directory: Any) -> pathlib.Path:
    """An existing checkpoint directory, with any interrupted step replacement resolved."""
    directory = _orbax.check_directory(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Checkpoint directory {directory} does not exist; pass the directory given to "
            "save_model."
        )
    _orbax.recover(directory)
    return directory


def restore_model(
    directory: str | pathlib.Path,
    *,
    config: DKVBConfig | None = None,
    step: int | None = None,
    shardings: Any = None,
    verify: bool = True,
) -> ModelCheckpoint:
    """Restores a model saved by :func:`save_model`.

    Args:
      directory: the checkpoint directory.
      config: the configuration the caller expects; a checkpoint with another one is refused.
      step: the step to restore (default: the latest).
      shardings: where to put the variables: None (the first local device), one `Sharding`
        for every leaf, a `Mesh` (replicated, or codebook-sharded on a mesh with a
        ``'codebook'`` axis), or a nested dict of shardings per variable. The device count may
        differ from the one that saved.
      verify: compare every restored array with the sha256 recorded at save time.

    Raises:
      FileNotFoundError: `directory` does not exist.
      CheckpointError (a ValueError): no complete step, a truncated or corrupt step, or a
        configuration that differs from `config`.
    """
    if config is not None and not isinstance(config, DKVBConfig):
        raise TypeError(f"config must be a DKVBConfig or None, got {type(config).__name__}.")
    directory = _orbax.check_directory(directory)
    step, meta = read_meta(directory, step)
    where = directory / str(step)
    try:
        saved = DKVBConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {where} has an unreadable config: {e}") from e
    if config is not None and saved != config:
        raise CheckpointError(
            f"Checkpoint {where} was saved for a different model configuration "
            f"({_config_diff(saved, config)}). Build the model from the checkpoint's config "
            "(restore_model(directory).config) or point to the matching checkpoint."
        )
    specs = meta["variables"]
    target = _orbax.abstract_tree(specs, _sharding_fn(shardings, specs))
    _orbax.check_files(where, digests=verify)
    with _orbax.manager(directory, ITEMS, read_only=True) as mgr:
        with _orbax.read_errors(where, "its variables"):
            variables = mgr.restore(
                step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(target))
            )["variables"]
        purged = tuple(int(s) for s in meta.get("purged_steps", ()))
        still_there = sorted(set(purged) & set(mgr.all_steps()))
    if still_there:
        # The save committed this step and was stopped before it deleted the earlier ones.
        warnings.warn(
            f"Checkpoint {where} records that steps {still_there} were purged, but they are "
            f"still in {directory}: the save was interrupted before deleting them. Delete them "
            f"with dkvb_jax.checkpoints.purge_steps({str(directory)!r}, keep={step}).",
            stacklevel=2,
        )
    if verify:
        _orbax.verify_checksums(variables, specs, where)
    return ModelCheckpoint(
        config=saved,
        variables=variables,
        encoder=meta.get("encoder"),
        audit=_audit_from_json(meta.get("audit", [])),
        step=step,
        provenance=meta.get("provenance"),
        purged_steps=purged,
    )


def list_steps(directory: str | pathlib.Path) -> list[int]:
    """Complete steps of a checkpoint directory, oldest first ([] when it does not exist)."""
    directory = _orbax.check_directory(directory)
    if not directory.is_dir():
        return []
    _orbax.recover(directory)
    with _orbax.manager(directory, ITEMS, read_only=True) as mgr:
        return sorted(mgr.all_steps())
