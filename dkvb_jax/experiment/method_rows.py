"""The DKVB rows of a class-unlearning run: one per registered method the config names.

Every method goes the same way (:func:`method_rows`): its request is built from the source its
statistics step reads (:attr:`~dkvb_jax.unlearning.UnlearningMethod.reads`), a masking method
sweeps its size on the sweep split for the smallest one reaching the target, the library call
:func:`~dkvb_jax.unlearning.unlearn` is timed, the method's costed core
(:func:`~dkvb_jax.unlearning.spec.costed_core`) is timed and its FLOPs counted, and the row is
measured against the original it started from. A method reading label statistics starts from
closed-form values fitted on the same keys (their own original row); an exact one is also
checked against refitting those values without the forget classes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from dkvb_jax import exact
from dkvb_jax.evaluation import ResultRow, Timer, forward_cost
from dkvb_jax.evaluation.splits import UnlearningData
from dkvb_jax.evaluation.table import dkvb_row_name
from dkvb_jax.experiment.config import ExperimentConfig
from dkvb_jax.experiment.fitting import FittedDKVB
from dkvb_jax.unlearning import (
    METHODS,
    AuditRecord,
    ForgetData,
    SweepResult,
    UnlearningMethod,
    get_method,
    sweep,
    unlearn,
    variables_hash,
)
from dkvb_jax.unlearning.spec import costed_core

ORIGINAL = "original"
ORIGINAL_CLOSED_FORM = "original (DKVB closed form)"
# What the cost of a method reading each source leaves out or includes, for the cost record.
_SOURCE_NOTES = {
    "usage": "usage histogram",
    "forget_x": "forget examples",
    "label_stats": "label counts",
}

Measure = Callable[..., ResultRow]
CachedRow = Callable[[str, Callable[[], ResultRow]], ResultRow]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """What every DKVB row of one run shares.

    Attributes:
      fitted: the fitted DKVB model (its variables, stored histogram and provenance).
      train: the values' training rows: embeddings `[n, dim]`, labels `[n]`, row ids `[n]`.
      data: the four splits of the forget request (:class:`dkvb_jax.baselines.UnlearningData`).
      forget: the forget classes.
      forget_x: the forget training rows `[n_f, dim]` in a seeded random order (UvE's first N_e).
      sweep_split: embeddings and labels the sweeps measure forget accuracy on.
      config: the experiment settings.
      measure: ``(name, apply_fn, variables, *, cost, original, **extra) -> ResultRow``.
      cached_row: ``(name, compute) -> ResultRow``, from the row cache when there.
    """

    fitted: FittedDKVB
    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    data: UnlearningData
    forget: tuple[int, ...]
    forget_x: np.ndarray
    sweep_split: tuple[np.ndarray, np.ndarray]
    config: ExperimentConfig
    measure: Measure
    cached_row: CachedRow


@dataclasses.dataclass
class MethodRows:
    """The DKVB rows, in table order (each original before the first row that starts from it),
    and what the methods chose and produced, by method name."""

    rows: dict[str, ResultRow] = dataclasses.field(default_factory=dict)
    sweeps: dict[str, SweepResult] = dataclasses.field(default_factory=dict)
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    unlearned: dict[str, dict] = dataclasses.field(default_factory=dict)
    audits: dict[str, AuditRecord] = dataclasses.field(default_factory=dict)

    def outputs(self) -> dict[str, dict]:
        """What a run's result keeps besides the rows: sweeps, sizes, variables, audits."""
        return dict(
            sweeps=self.sweeps, sizes=self.sizes, unlearned=self.unlearned, audits=self.audits
        )


@dataclasses.dataclass(frozen=True)
class _Start:
    """A method's request, the variables it edits and the row of the model they are."""

    data: ForgetData
    variables: dict
    original: str


class _Sources:
    """Builds each source of requests once: the histogram, the forget rows, the closed form."""

    def __init__(self, run: Run, out: MethodRows):
        self.run, self.out = run, out
        self._closed_form = None

    def start(self, method: UnlearningMethod) -> _Start:
        run, fitted = self.run, self.run.fitted
        if method.reads == "usage":
            data = ForgetData(classes=run.forget, usage=fitted.usage)
        elif method.reads == "forget_x":
            data = ForgetData(classes=run.forget, forget_x=run.forget_x)
        else:  # label statistics: of closed-form values on the same keys
            v_cf, stats, estimator = self.closed_form()
            data = ForgetData(classes=run.forget, label_stats=stats, estimator=estimator)
            return _Start(data, v_cf, ORIGINAL_CLOSED_FORM)
        return _Start(data, fitted.variables, ORIGINAL)

    def closed_form(self):
        """Closed-form values from label counts of the training rows (timed), and their row."""
        if self._closed_form is None:
            run, fitted = self.run, self.run.fitted
            x, y, ids = run.train
            estimator = exact.EstimatorConfig(alpha=run.config.exact_alpha)
            with Timer() as t:
                v_cf, stats = exact.fit_exact(
                    fitted.model,
                    fitted.variables,
                    x,
                    y,
                    ids,
                    provenance=fitted.provenance,
                    estimator=estimator,
                )
                jax.block_until_ready(v_cf)
            self.out.rows[ORIGINAL_CLOSED_FORM] = run.cached_row(
                ORIGINAL_CLOSED_FORM,
                lambda: run.measure(
                    ORIGINAL_CLOSED_FORM,
                    fitted.model.apply,
                    v_cf,
                    cost=None,
                    original=None,
                    model="dkvb closed form",
                    fit_seconds=t.seconds,
                    estimator=dataclasses.asdict(estimator),
                ),
            )
            self._closed_form = (v_cf, stats, estimator)
        return self._closed_form

    def refit_checks(self, record: AuditRecord) -> dict[str, Any]:
        """An exact removal against its oracle: the closed-form values refitted on the retained
        rows' stored codes (bit-identical, or the method is not exact), and its certificate."""
        run, fitted = self.run, self.run.fitted
        _, stats, estimator = self.closed_form()
        _, y, ids = run.train
        keep = ~np.isin(y, run.forget)
        v_refit, _ = exact.fit_exact(
            fitted.model,
            fitted.variables,
            np.asarray(stats.codes)[keep],
            y[keep],
            ids[keep],
            estimator=estimator,
        )
        return {
            # The audit record already fingerprints the unlearned variables.
            "bit_identical_to_refit": variables_hash(v_refit) == record.hash_after,
            "certified_exact": record.certified,
            "exact_reason": record.certificate["reason"],
        }


def _size(method: UnlearningMethod, start: _Start, run: Run, out: MethodRows) -> dict[str, Any]:
    """A masking method's sweep on the sweep split: the smallest size reaching the target (the
    largest tried if none does), recorded in `out`; the row's extra entries."""
    if method.size is None:
        return {}
    cfg = run.config
    result = sweep(
        method,
        run.fitted.model,
        start.variables,
        start.data,
        *run.sweep_split,
        cfg.grid(method.name),
        target=cfg.target,
        mode=cfg.mask_mode,
        clip=True,  # a grid value above the keys or forget examples there are tries them all
    )
    n = result.smallest_n or max(result.ns)
    out.sweeps[method.name], out.sizes[method.name] = result, n
    return {method.size.name: n, "reached_target": result.smallest_n is not None}


def _method_row(method: UnlearningMethod, run: Run, sources: _Sources, out: MethodRows) -> None:
    """Sweeps (if it has a size), unlearns through the library call (timed), costs the method's
    core and measures the row."""
    model, mode, name = run.fitted.model, run.config.mask_mode, dkvb_row_name(method)
    start = sources.start(method)
    extra = _size(method, start, run, out)
    n = out.sizes.get(method.name)
    with Timer() as t:
        v, record = unlearn(method, model, start.variables, start.data, n, mode=mode)
    core = costed_core(method, model, start.variables, start.data, n, mode)
    _, cost = forward_cost(name, core.fn, *core.args, flops_fn=core.flops_fn)
    cost = cost.with_extra(library_call_wall_s=t.seconds, source=_SOURCE_NOTES[method.reads])
    out.unlearned[method.name], out.audits[method.name] = v, record
    if method.exact:
        extra.update(sources.refit_checks(record))
    original = out.rows[start.original]
    out.rows[name] = run.cached_row(
        name,
        lambda: run.measure(
            name,
            model.apply,
            v,
            cost=cost,
            original=original,
            model="dkvb",
            audit=json.loads(record.to_json()),
            **extra,
        ),
    )


def method_rows(
    run: Run, original: ResultRow, methods: Sequence[str], *, step: Callable[[str], None]
) -> MethodRows:
    """The rows of `methods` (registered names), in registry order.

    Args:
      run: what the rows share.
      original: the fitted model's own row.
      methods: the registered methods to run.
      step: called with each method's label before it runs (a progress bar's postfix).
    """
    out = MethodRows(rows={ORIGINAL: original})
    sources = _Sources(run, out)
    chosen = {get_method(name).name for name in methods}
    for method in (m for m in METHODS.values() if m.name in chosen):
        step(method.label)
        _method_row(method, run, sources, out)
    del out.rows[ORIGINAL]
    return out
