"""The audit record of an exact add/remove request (JSON-serialisable).

A stand-in until it is unified with :mod:`dkvb_jax.unlearning`'s record; the fields that matter
here are ``exact`` and ``reason``: whether the result equals a refit without the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import numpy as np


def array_hash(*arrays) -> str:
    """Short sha256 of the arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExactAuditRecord:
    """What an exact request did.

    Attributes:
      method: ``exact_remove``, ``exact_forget_classes`` or ``exact_add``.
      exact: True when the new variables are bit-identical to a fit without (or with) the data:
        the keys are known not to depend on the affected examples.
      reason: Why ``exact`` is what it is.
      example_ids: The ids removed or added, sorted.
      classes: Forgotten classes (``exact_forget_classes`` only).
      num_examples: Number of examples affected.
      estimator: The estimator's settings.
      values_before / values_after / counts_before / counts_after: hashes of the values and counts.
      timestamp: Unix time of the request.
      seconds: Wall time of the update itself (checks, count update, value derivation), not
        counting the hashing for this record.
    """

    method: str
    exact: bool
    reason: str
    example_ids: tuple[int, ...]
    classes: tuple[int, ...] | None
    num_examples: int
    estimator: dict
    values_before: str
    values_after: str
    counts_before: str
    counts_after: str
    timestamp: float = dataclasses.field(default_factory=time.time)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExactAuditRecord:
        d = json.loads(text)
        d["example_ids"] = tuple(d["example_ids"])
        if d["classes"] is not None:
            d["classes"] = tuple(d["classes"])
        return cls(**d)
