"""Saving and restoring a whole DKVB model: configuration, encoder, variables and audit trail.

A model checkpoint is one orbax step with two items:

- ``variables``: the full variables pytree (``params`` values and decoder, ``frozen`` keys and
  projection, ``mask``), saved with ``StandardSave`` from whatever sharding it has;
- ``meta``: JSON with the format version, the :class:`DKVBConfig`, the encoder name, the audit
  records of every unlearning call applied, and a shape/dtype/sha256 entry per variable.

Each save of the same directory adds a step (keep the model before and after each unlearning
call, for instance), so an unlearned checkpoint carries the list of what it forgot. Restoring
builds the target from the saved shapes and the requested shardings, so a checkpoint written
from 8 devices restores onto 1 device, or onto any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import Mesh, Sharding

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
    """

    config: DKVBConfig
    variables: dict
    encoder: str | None
    audit: list
    step: int


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
) -> int:
    """Saves a model as a new step of `directory`.

    Args:
      directory: checkpoint directory (created if needed).
      config: the model's configuration.
      variables: the model's variables, on any devices/sharding.
      encoder: name of the encoder the model reads (e.g. ``"mobilenet_v1"``).
      audit: audit records of the unlearning calls applied to these variables.
      step: step number; defaults to one past the latest step (0 for a new directory).
      max_to_keep: keep only the newest steps (None keeps all).

    Returns:
      The step written. The step becomes visible only once fully written: an interrupted save
      leaves no step that looks valid.
    """
    if not isinstance(config, DKVBConfig):
        raise TypeError(f"config must be a DKVBConfig, got {type(config).__name__}.")
    for name in ("params", "frozen", "mask"):
        if not isinstance(variables, dict) or name not in variables:
            raise ValueError(
                f"variables must be a DKVB variables dict with a '{name}' collection "
                f"(from model.init), got keys {list(variables) if isinstance(variables, dict) else type(variables).__name__}."
            )
    if encoder is not None and not isinstance(encoder, str):
        raise TypeError(f"encoder must be a string name or None, got {type(encoder).__name__}.")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "encoder": encoder,
        "audit": _audit_to_json(audit),
        "variables": _orbax.checksums(variables) or _orbax.leaf_specs(variables),
    }
    meta = _orbax.jsonable(meta, "checkpoint metadata")
    directory = pathlib.Path(directory)
    with _orbax.manager(directory, ITEMS, max_to_keep=max_to_keep) as mgr:
        if step is None:
            latest = mgr.latest_step()
            step = 0 if latest is None else latest + 1
        mgr.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)
            ),
        )
        mgr.wait_until_finished()
    return step


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
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"Checkpoint directory {directory} does not exist; pass the directory given to "
            "save_model."
        )
    with _orbax.manager(directory, ITEMS, read_only=True) as mgr:
        step = _orbax.resolve_step(mgr, directory, step)
        _orbax.check_committed(directory, step, ITEMS)
        try:
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"Checkpoint {directory / str(step)} is truncated or corrupt: cannot read its "
                f"metadata ({type(e).__name__}: {e})."
            ) from e
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
    directory = pathlib.Path(directory)
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
    with _orbax.manager(directory, ITEMS, read_only=True) as mgr:
        try:
            variables = mgr.restore(
                step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(target))
            )["variables"]
        except Exception as e:  # orbax / tensorstore raise many types for damaged files
            raise CheckpointError(
                f"Checkpoint {where} is truncated or corrupt: its variables cannot be read "
                f"({type(e).__name__}: {str(e)[:300]}). Restore another step or re-save."
            ) from e
    if verify:
        _orbax.verify_checksums(variables, specs, where)
    return ModelCheckpoint(
        config=saved,
        variables=variables,
        encoder=meta.get("encoder"),
        audit=_audit_from_json(meta.get("audit", [])),
        step=step,
    )


def list_steps(directory: str | pathlib.Path) -> list[int]:
    """Complete steps of a checkpoint directory, oldest first."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    with _orbax.manager(directory, ITEMS, read_only=True) as mgr:
        return sorted(mgr.all_steps())
