"""Audit records: what an unlearning call forgot, which pairs it masked, when, and its effect."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import jax
import numpy as np

from dkvb_jax import _fingerprint
from dkvb_jax.provenance import Certificate, approximate


def variables_hash(variables: Any) -> str:
    """sha256 of a pytree: every leaf's path, dtype, shape and the sha256 of its bytes.

    Leaves are taken in sorted path order, so equal variables always hash equal, whichever code
    built them (dict insertion order does not matter).
    """
    return _tree_hash(variables, {})


def _tree_hash(variables: Any, digests: dict[int, bytes]) -> str:
    """`variables_hash`, reusing `digests` (leaf id -> sha256) for leaves already hashed.

    An unlearning call returns its input's keys and values as the very same arrays, so its
    record hashes them once for both fingerprints: they are 100 MB of the paper-size model.
    """
    parts = []
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        if id(leaf) not in digests:
            digests[id(leaf)] = _fingerprint.digest(arr)
        parts += [jax.tree_util.keystr(path), f"|{arr.dtype.str}|{arr.shape}|", digests[id(leaf)]]
    return _fingerprint.sha256(*parts)


def _jsonable(x: Any) -> Any:
    """Converts numpy/jax scalars and arrays (recursively) into plain JSON types."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic | np.ndarray | jax.Array):
        return _jsonable(np.asarray(x).tolist())
    return x


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One unlearning request, JSON-serialisable.

    Attributes:
      method: ``uva``, ``uve``, ``forget_classes`` or ``forget_examples``.
      params: the call's settings (n, mode, rekey, retain-aware ratio/margin, ...).
      forgotten_classes: class ids forgotten, or None for example-level requests.
      forgotten_examples: example ids forgotten, or None.
      pairs_masked: pairs newly masked by this call, per codebook `[codebooks]`.
      pairs_spared: keys spared by retain-aware selection, per codebook; None when it was off.
      total_masked: pairs masked after the call (all requests so far), per codebook.
      hash_before: :func:`variables_hash` of the input variables.
      hash_after: :func:`variables_hash` of the output variables.
      timestamp: UTC time of the call, ISO 8601.
      effect: measured metrics, e.g. ``{"before": {...}, "after": {...}}``, when given.
      certificate: whether the call is certified exact and why
        (:class:`dkvb_jax.provenance.Certificate` as a dict); masking calls are never exact.
        None only in records written before certificates existed.
    """

    method: str
    params: dict
    forgotten_classes: list[int] | None
    forgotten_examples: list[int] | None
    pairs_masked: list[int]
    pairs_spared: list[int] | None
    total_masked: list[int]
    hash_before: str
    hash_after: str
    timestamp: str
    effect: dict | None = None
    certificate: dict | None = None

    @property
    def certified(self) -> bool:
        """Whether the call is certified exact (False for records without a certificate)."""
        return bool(self.certificate and self.certificate.get("certified"))

    @property
    def changed(self) -> bool:
        """Whether the call changed the variables at all."""
        return self.hash_before != self.hash_after

    def to_json(self, **kwargs) -> str:
        return json.dumps(_jsonable(dataclasses.asdict(self)), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> AuditRecord:
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"Unknown AuditRecord fields {sorted(set(d) - known)}.")
        return cls(**d)

    def with_effect(self, effect: dict) -> AuditRecord:
        return dataclasses.replace(self, effect=_jsonable(effect))


def make_record(
    *,
    method: str,
    params: dict,
    before: dict,
    after: dict,
    forgotten_classes=None,
    forgotten_examples=None,
    spared=None,
    effect: dict | None = None,
    certificate: Certificate | None = None,
) -> AuditRecord:
    """Builds the record of a call that turned `before` into `after`.

    `certificate` defaults to the verdict of a masking method (never exact); exact removals
    pass the one :func:`dkvb_jax.provenance.certify` derived.
    """
    if certificate is None:
        certificate = approximate(method)
    digests: dict[int, bytes] = {}  # both trees stay alive for the call, so ids stay unique
    mask_b = np.asarray(before["mask"]["search"]) | np.asarray(before["mask"]["readout"])
    mask_a = np.asarray(after["mask"]["search"]) | np.asarray(after["mask"]["readout"])
    return AuditRecord(
        method=method,
        params=_jsonable(params),
        forgotten_classes=None
        if forgotten_classes is None
        else [int(c) for c in forgotten_classes],
        forgotten_examples=None
        if forgotten_examples is None
        else [int(i) for i in forgotten_examples],
        pairs_masked=(mask_a & ~mask_b).sum(-1).tolist(),
        pairs_spared=None if spared is None else np.asarray(spared).tolist(),
        total_masked=mask_a.sum(-1).tolist(),
        hash_before=_tree_hash(before, digests),
        hash_after=_tree_hash(after, digests),
        timestamp=datetime.datetime.now(datetime.UTC).isoformat(),
        effect=None if effect is None else _jsonable(effect),
        certificate=certificate.to_dict(),
    )
