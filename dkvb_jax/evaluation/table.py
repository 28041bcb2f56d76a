"""The results table: one row per method, printable as Markdown and saved as CSV and JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from tabulate import tabulate

from dkvb_jax.evaluation.cost import CostRecord
from dkvb_jax.evaluation.mia import MIAResult, within_noise

__all__ = [
    "FORGET_TOLERANCE",
    "ResultRow",
    "ResultsTable",
    "dkvb_row_name",
    "forget_target",
    "method_order",
    "reference_order",
]


def dkvb_row_name(method) -> str:
    """The row of a registered unlearning method (an ``UnlearningMethod``): ``'DKVB-'`` and its
    label, e.g. ``'DKVB-UvA'``."""
    return f"DKVB-{method.label}"


def reference_order() -> tuple[str, ...]:
    """The rows a table's costs can be relative to, first present wins: every registered DKVB
    unlearning method's, in registry order."""
    from dkvb_jax.unlearning.registry import METHODS  # the registry may grow after import

    return tuple(dkvb_row_name(m) for m in METHODS.values())


def method_order() -> tuple[str, ...]:
    """The paper's row order (the original, the baselines, then the registered DKVB methods);
    other rows follow in insertion order."""
    from dkvb_jax.baselines import BASELINES  # the baselines build on this module

    return ("original", *BASELINES, *reference_order())


_HEADERS = (
    "method",
    "retain-test acc (%)",
    "retain-train acc (%)",
    "forget-test acc (%)",
    "MIA (%) ± fold std (n/side)",
    "wall s",
    "GFLOPs",
    "reached DKVB forget acc",
    "cost vs DKVB",
)
FORGET_TOLERANCE = 0.01
"""A row reaches the reference's forget accuracy when it is at most this much (1 point) above."""
NOISE_MARK = "†"


def forget_target(reference_forget_acc: float) -> float:
    """The forget accuracy a row must get to (<=) to count as forgetting as much as the reference."""
    return reference_forget_acc + FORGET_TOLERANCE


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One method's results. None = not measured (e.g. no cost for the original model).

    Attributes:
      method: row name.
      retain_test_acc, forget_test_acc, mia: fractions in [0, 1].
      wall_s: wall seconds of the method.
      flops: total FLOPs (forward + backward + optimizer).
      extra: anything else (deltas, per-class accuracy, the full cost record, the MIA's
        ``MIAResult.to_dict()`` as ``'mia'``, and as ``'original_row'`` the name of the row
        holding the model this one was unlearned from), JSON-serialisable.
      retain_train_acc: accuracy on the retained training rows, a fraction in [0, 1] (an
        unlearned model may keep retain-test accuracy while losing its fit to the training
        rows, which a retrain oracle keeps).
    """

    method: str
    retain_test_acc: float | None = None
    forget_test_acc: float | None = None
    mia: float | None = None
    wall_s: float | None = None
    flops: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    retain_train_acc: float | None = None

    def __post_init__(self):
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"ResultRow.method must be a non-empty string, got {self.method!r}.")
        for name in _NUMBERS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"ResultRow({self.method!r}).{name} must be a finite number or None, got {value!r}."
                )
            if name in _FRACTIONS and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"ResultRow({self.method!r}).{name} must be a fraction in [0, 1], got {value!r}."
                )
            if value < 0:
                raise ValueError(f"ResultRow({self.method!r}).{name} must be >= 0, got {value!r}.")

    @classmethod
    def from_results(
        cls,
        method: str,
        accuracies: Mapping[str, float],
        *,
        mia: MIAResult | float | None = None,
        cost: CostRecord | None = None,
        **extra: Any,
    ) -> ResultRow:
        """Builds a row from ``evaluate_unlearning`` output, an MIA result and a cost record."""
        extra = dict(extra)
        extra["accuracies"] = {k: float(v) for k, v in accuracies.items()}
        if isinstance(mia, MIAResult):
            extra["mia"] = mia.to_dict()
            mia = mia.accuracy
        if cost is not None:
            extra["cost"] = cost.to_dict()
        return cls(
            method=method,
            retain_test_acc=_opt_float(accuracies.get("retain_test")),
            retain_train_acc=_opt_float(accuracies.get("retain_train")),
            forget_test_acc=_opt_float(accuracies.get("forget_test")),
            mia=_opt_float(mia),
            wall_s=None if cost is None else float(cost.wall_s),
            flops=None if cost is None else float(cost.total_flops),
            extra=extra,
        )

    @property
    def mia_result(self) -> MIAResult | None:
        """The attack with its spread over folds, when the row recorded one."""
        d = self.extra.get("mia")
        return MIAResult.from_dict(d) if isinstance(d, Mapping) else None


_FRACTIONS = ("retain_test_acc", "retain_train_acc", "forget_test_acc", "mia")
_NUMBERS = (*_FRACTIONS, "wall_s", "flops")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def default_reference(methods: Iterable[str]) -> str | None:
    """The first of :func:`reference_order` in `methods`, else the first ``DKVB*`` one, or None."""
    methods = list(methods)
    preferred = [m for m in reference_order() if m in methods]
    dkvb = [m for m in methods if m.startswith("DKVB")]
    return (preferred or dkvb or [None])[0]


def _mia_cell(rec: Mapping[str, Any]) -> str:
    if rec["mia"] is None:
        return "-"
    if rec["mia_std"] is None:
        return f"{100 * rec['mia']:.2f}"
    mark = NOISE_MARK if rec["mia_within_noise"] else ""
    return f"{100 * rec['mia']:.1f} ± {100 * rec['mia_std']:.1f} ({rec['mia_n_per_side']}){mark}"


def _reached_cell(reached: bool | None, row: ResultRow) -> str:
    if reached is None:
        return "-"
    epochs = row.extra.get("cost", {}).get("extra", {}).get("epochs")
    return ("yes" if reached else "no") + ("" if epochs is None else f" ({epochs} ep)")


@dataclasses.dataclass(frozen=True)
class ResultsTable:
    """Rows of results; the cost column is each method's FLOPs over the reference DKVB row's.

    Attributes:
      rows: the rows, one per method (names unique).
      reference: method whose FLOPs are the unit of "cost vs DKVB"; default: the first of
        :func:`reference_order` present, else the first method whose name starts with ``'DKVB'``.
      meta: free-form description (dataset, encoder, seed, machine), stored in the JSON.
    """

    rows: tuple[ResultRow, ...]
    reference: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        rows = tuple(self.rows)
        names = [r.method for r in rows]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"ResultsTable rows must have unique methods; duplicated: {duplicates}."
            )
        object.__setattr__(self, "rows", rows)
        if self.reference is not None and self.reference not in names:
            raise ValueError(
                f"ResultsTable.reference {self.reference!r} is not a row (rows: {names})."
            )
        if self.reference is None:
            object.__setattr__(self, "reference", default_reference(names))

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[ResultRow],
        *,
        reference: str | None = None,
        meta: Mapping[str, Any] | None = None,
        sort: bool = True,
    ) -> ResultsTable:
        """Builds a table; with ``sort`` rows follow :func:`method_order`, then insertion order."""
        rows = list(rows)
        if sort:
            rank = {m: i for i, m in enumerate(method_order())}
            rows = sorted(rows, key=lambda r: rank.get(r.method, len(rank)))  # stable
        return cls(tuple(rows), reference, dict(meta or {}))

    @property
    def methods(self) -> list[str]:
        return [r.method for r in self.rows]

    def row(self, method: str) -> ResultRow | None:
        return next((r for r in self.rows if r.method == method), None)

    def reached(self, row: ResultRow) -> bool | None:
        """Whether a costed row forgot as much as the reference DKVB row (within
        :data:`FORGET_TOLERANCE`); None for rows without a cost or forget accuracy."""
        if self.reference is None or row.flops is None or row.forget_test_acc is None:
            return None
        ref = self.row(self.reference)
        if ref.forget_test_acc is None:
            return None
        return row.forget_test_acc <= forget_target(ref.forget_test_acc)

    def mia_within_noise(self, row: ResultRow) -> bool | None:
        """Whether the row's MIA differs from its original model's by no more than their
        combined fold spread (:func:`~dkvb_jax.evaluation.mia.within_noise`); None when either
        attack or the original row is missing."""
        original = self.row(row.extra.get("original_row", ""))
        if original is None or row.mia_result is None or original.mia_result is None:
            return None
        return within_noise(row.mia_result, original.mia_result)

    def relative_cost(self, row: ResultRow) -> float | None:
        """``row.flops / reference.flops``, or None when either is missing, the reference is 0,
        or the row did not reach the reference's forget accuracy: a cost ratio is only
        meaningful at equal forgetting."""
        if self.reference is None or row.flops is None or self.reached(row) is False:
            return None
        ref = next(r for r in self.rows if r.method == self.reference)
        if not ref.flops:
            return None
        return row.flops / ref.flops

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per row with raw values (fractions, seconds, FLOPs), CSV-ready."""
        return [
            {
                "method": r.method,
                "retain_test_acc": r.retain_test_acc,
                "retain_train_acc": r.retain_train_acc,
                "forget_test_acc": r.forget_test_acc,
                "mia": r.mia,
                "mia_std": None if r.mia_result is None else r.mia_result.std,
                "mia_n_per_side": None if r.mia_result is None else r.mia_result.n_per_side,
                "mia_within_noise": self.mia_within_noise(r),
                "wall_s": r.wall_s,
                "gflops": None if r.flops is None else r.flops / 1e9,
                "reached": self.reached(r),
                "cost_vs_dkvb": self.relative_cost(r),
            }
            for r in self.rows
        ]

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown, then notes on the MIA and cost columns.

        Accuracies are in percent, missing entries '-'. The MIA cell is the attack's mean ± std
        over folds and the examples per side, marked when the change from the row's original
        model is within noise; the reached cell gives a trained baseline's epochs.
        """

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}"

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        records = self.records()
        body = [
            [
                rec["method"],
                pct(rec["retain_test_acc"]),
                pct(rec["retain_train_acc"]),
                pct(rec["forget_test_acc"]),
                _mia_cell(rec),
                num(rec["wall_s"], ".3f"),
                num(rec["gflops"], ".4g"),
                _reached_cell(rec["reached"], row),
                "-" if rec["cost_vs_dkvb"] is None else f"{rec['cost_vs_dkvb']:.3g}x",
            ]
            for rec, row in zip(records, self.rows, strict=True)
        ]
        table = tabulate(body, headers=_HEADERS, tablefmt="github", disable_numparse=True)
        return "\n\n".join([table, *self._notes(records)])

    def _notes(self, records: list[dict[str, Any]]) -> list[str]:
        notes = []
        if any(rec["mia_within_noise"] for rec in records):
            notes.append(
                f"{NOISE_MARK} MIA change from the row's original model within noise: "
                "|Δ| <= sqrt(std² + std_original²), std over the attack's folds."
            )
        if self.reference is not None:
            notes.append(
                f"Cost vs DKVB: FLOPs over {self.reference}'s, only for rows whose forget-test "
                f"accuracy is at most {100 * FORGET_TOLERANCE:g} point above {self.reference}'s "
                "(a cost ratio means something only at equal forgetting)."
            )
        return notes

    def save_csv(self, path: str | os.PathLike) -> None:
        """Writes ``records()`` as CSV (empty cell = not measured)."""
        records = self.records()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["method"])
            writer.writeheader()
            for rec in records:
                writer.writerow({k: "" if v is None else v for k, v in rec.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "meta": dict(self.meta),
            "rows": [dataclasses.asdict(r) | {"extra": dict(r.extra)} for r in self.rows],
            "summary": self.records(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResultsTable:
        rows = tuple(ResultRow(**row) for row in d["rows"])
        return cls(rows, d.get("reference"), dict(d.get("meta", {})))

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=False)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> ResultsTable:
        if not os.path.exists(path):
            raise FileNotFoundError(f"results JSON not found: {path}")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def save(self, directory: str | os.PathLike, stem: str = "results") -> dict[str, str]:
        """Writes ``stem.md``, ``stem.csv`` and ``stem.json`` into ``directory``; returns the paths."""
        os.makedirs(directory, exist_ok=True)
        paths = {ext: os.path.join(directory, f"{stem}.{ext}") for ext in ("md", "csv", "json")}
        with open(paths["md"], "w") as f:
            f.write(self.to_markdown() + "\n")
        self.save_csv(paths["csv"])
        self.save_json(paths["json"])
        return paths
