"""Provenance of a fitted model's data-dependent parts, and the certificates derived from it.

A fitted DKVB is frozen parts (the encoder, the input preprocessing folded into the projection,
the keys) plus values. Each part records, when it is fitted, the rows it was fitted on
(:class:`Rows`: a dataset namespace such as ``"cifar10/train"`` and row ids), and the record
travels with the model and its checkpoint.

A removal of rows S from the labelled data D is *certified* exact only when S is disjoint from
the rows of every frozen part and the values are re-derived from label counts that S was
subtracted from (METHOD.md, section 7). :func:`certify` derives the verdict from the record
alone; a caller can take a certificate away (:meth:`Certificate.withdrawn`), never grant one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dkvb_jax import _fingerprint

PARTS: tuple[str, ...] = ("encoder", "preprocess", "keys", "values")
# Namespace of labelled rows the caller did not name: comparable with nothing else.
UNNAMED = "unnamed labelled data"
_SHOWN_IDS = 10


def _unique_ids(ids: Any, name: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name}: expected a 1-D array of integer row ids, got {arr.dtype} "
                        f"{arr.shape}.")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: row ids must be non-negative, got {int(arr.min())}.")
    return np.unique(arr.astype(np.int64))


def _ranges(ids: np.ndarray) -> list[list[int]]:
    """Sorted unique ids as ``[start, stop)`` runs: a contiguous split is one entry in JSON."""
    if ids.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [ids.size]])
    return [[int(ids[a]), int(ids[b - 1]) + 1] for a, b in zip(starts, stops, strict=True)]


def _from_ranges(runs: Sequence[Sequence[int]]) -> np.ndarray:
    if not runs:
        return np.zeros((0,), np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])


def shown(ids: np.ndarray) -> str:
    """The first few ids of a set, for messages."""
    text = ", ".join(str(int(i)) for i in ids[:_SHOWN_IDS])
    return text + (f", ... ({ids.size:,} in all)" if ids.size > _SHOWN_IDS else "")


@dataclasses.dataclass(frozen=True, eq=False)
class Rows:
    """Rows of one dataset that a part was fitted on.

    Attributes:
      dataset: namespace of the rows, ``"<dataset>/<split>"`` (e.g. ``"cifar10/train"``).
      ids: sorted unique int64 row ids `[m]`, or None for every row of the dataset.
      labels: whether the fit used the rows' labels.
    """

    dataset: str
    ids: np.ndarray | None = None
    labels: bool = False

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"Rows.dataset: expected a non-empty string, got {self.dataset!r}.")
        if self.ids is not None:
            object.__setattr__(self, "ids", _unique_ids(self.ids, "Rows.ids"))

    @property
    def digest(self) -> str:
        return _fingerprint.sha256(
            f"{self.dataset}|{self.labels}|", b"all" if self.ids is None else self.ids
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Rows) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def describe(self) -> str:
        what = "every row" if self.ids is None else f"{self.ids.size:,} rows"
        return f"{what} of {self.dataset}" + (" with labels" if self.labels else "")

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "ids": None if self.ids is None else _ranges(self.ids),
            "labels": self.labels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rows:
        ids = d.get("ids")
        return cls(d["dataset"], None if ids is None else _from_ranges(ids), bool(d["labels"]))


@dataclasses.dataclass(frozen=True)
class Part:
    """One data-dependent part of a fitted model.

    Attributes:
      name: one of :data:`PARTS`.
      method: how it was fitted (``"pretrained"``, ``"lda"``, ``"ema_kmeans"``,
        ``"label_counts"``, ``"adam"``, ...).
      rows: the rows it was fitted on; ``()`` for a part fitted on no data (e.g. an identity
        preprocessing); None when it was not recorded, which rules out every certificate.
      subtractable: True when a removal subtracts the forgotten rows from this part exactly
        (values re-derived from per-pair label counts); such a part never blocks a certificate.
    """

    name: str
    method: str
    rows: tuple[Rows, ...] | None
    subtractable: bool = False

    def __post_init__(self):
        if self.name not in PARTS:
            raise ValueError(f"Part.name: expected one of {PARTS}, got {self.name!r}.")
        if self.rows is not None:
            object.__setattr__(self, "rows", tuple(self.rows))

    def describe(self) -> str:
        if self.rows is None:
            return f"{self.name} ({self.method}, training data not recorded)"
        if not self.rows:
            return f"{self.name} ({self.method}, no data)"
        return f"{self.name} ({self.method} on " + " + ".join(r.describe() for r in self.rows) + ")"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "rows": None if self.rows is None else [r.to_dict() for r in self.rows],
            "subtractable": self.subtractable,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Part:
        rows = d.get("rows")
        return cls(
            d["name"],
            d["method"],
            None if rows is None else tuple(Rows.from_dict(r) for r in rows),
            bool(d.get("subtractable", False)),
        )


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What every data-dependent part of a model was fitted on.

    Attributes:
      data: namespace of the labelled data D whose row ids forget requests name.
      parts: one :class:`Part` per entry of :data:`PARTS` that was recorded; a missing part
        counts as not recorded.
      data_within: namespace that D's rows are drawn from, when D is a sample of a larger set
        (``"cifar10/train"`` for the shipped ``cifar10_sample``): a part fitted on that set may
        have seen D's rows.
    """

    data: str
    parts: tuple[Part, ...]
    data_within: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "parts", tuple(self.parts))
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"Provenance.parts: each part may appear once, got {names}.")

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def with_part(self, part: Part) -> Provenance:
        """A copy with `part` replacing the part of the same name."""
        others = tuple(p for p in self.parts if p.name != part.name)
        order = {n: i for i, n in enumerate(PARTS)}
        parts = sorted((*others, part), key=lambda p: order[p.name])
        return dataclasses.replace(self, parts=tuple(parts))

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "data_within": self.data_within,
            "parts": [p.to_dict() for p in self.parts],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        try:
            return cls(
                d["data"], tuple(Part.from_dict(p) for p in d["parts"]), d.get("data_within")
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"provenance: unreadable record ({type(e).__name__}: {e}).") from e


@dataclasses.dataclass(frozen=True)
class Certificate:
    """Whether a removal is certified exact, and why.

    Attributes:
      certified: every changed leaf equals a refit of every data-dependent part on D \\ S.
      values_exact: the values equal a refit on the retained rows with the same frozen parts.
      reason: one sentence a person can read, naming the parts that saw the forgotten rows.
      parts_that_saw: names of the parts that saw (or may have seen) forgotten rows.
    """

    certified: bool
    values_exact: bool
    reason: str
    parts_that_saw: tuple[str, ...] = ()

    def withdrawn(self, reason: str) -> Certificate:
        """The same verdict without the certificate: callers may withdraw, never grant one."""
        if not self.certified:
            return self
        return dataclasses.replace(self, certified=False, reason=f"withdrawn: {reason}")

    def to_dict(self) -> dict:
        return {
            "certified": self.certified,
            "values_exact": self.values_exact,
            "reason": self.reason,
            "parts_that_saw": list(self.parts_that_saw),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Certificate:
        return cls(
            bool(d["certified"]),
            bool(d["values_exact"]),
            str(d["reason"]),
            tuple(d.get("parts_that_saw", ())),
        )


def _seen(rows: Rows, prov: Provenance, forget: np.ndarray) -> tuple[int, str]:
    """How many forgotten rows `rows` covers (0 if none) and how, for the reason."""
    if rows.dataset == prov.data:
        hit = forget if rows.ids is None else np.intersect1d(forget, rows.ids)
        return hit.size, f"ids {shown(hit)}" if hit.size else ""
    if prov.data_within is not None and rows.dataset == prov.data_within:
        # D is a sample of this set and the mapping of ids is unknown: it may hold any of them.
        return forget.size, f"{prov.data} is drawn from {rows.dataset}"
    return 0, ""


def approximate(method: str) -> Certificate:
    """The verdict of a masking method: never exact (METHOD.md, section 7)."""
    return Certificate(
        certified=False,
        values_exact=False,
        reason=(
            f"{method} masks key-value pairs: an approximation, never exact; compare its forget "
            "accuracy, retain damage and MIA with the retrain oracle"
        ),
    )


def certify(provenance: Provenance | None, forget_ids: Any) -> Certificate:
    """The certificate of an exact removal (values re-derived from counts without the rows).

    Args:
      provenance: the model's record; None when none was recorded.
      forget_ids: int `[m]` ids of the removed rows of ``provenance.data``.

    Returns:
      Certified when no frozen part saw a forgotten row; otherwise values exact but not
      certified, with the parts that saw them named in the reason.
    """
    forget = _unique_ids(forget_ids, "forget_ids")
    n = f"{forget.size:,} forgotten row" + ("s" if forget.size != 1 else "")
    if provenance is None:
        return Certificate(
            False,
            True,
            "values exact, not certified: no provenance was recorded when the model was fitted, "
            "so nothing shows that the encoder, preprocessing and keys were fitted without "
            f"the {n}",
            ("encoder", "preprocess", "keys"),
        )
    saw, notes, unknown = [], [], []
    for name in PARTS:
        part = provenance.part(name)
        if part is None or part.rows is None:
            unknown.append(name)
            what = f"{name} (not recorded)" if part is None else part.describe()
            notes.append(f"the {what} may hold the {n}")
            continue
        if part.subtractable:
            continue
        for rows in part.rows:
            count, how = _seen(rows, provenance, forget)
            if count:
                saw.append(name)
                notes.append(f"the {part.describe()} saw {count:,} of the {n} ({how})")
                break
    if saw or unknown:
        return Certificate(
            False,
            True,
            "values exact, not certified: " + "; ".join(notes) + ". Rows a frozen part was "
            "fitted on can only be forgotten by refitting that part",
            tuple(saw + unknown),
        )
    frozen = "; ".join(p.describe() for p in provenance.parts if not p.subtractable)
    return Certificate(
        True,
        True,
        f"certified exact: the {n} of {provenance.data} are disjoint from the data of every "
        f"frozen part ({frozen}), and the values are re-derived from label counts without them",
    )
