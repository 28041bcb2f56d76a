"""The paper's class-unlearning experiment on cached embeddings, end to end.

One call fits (or reuses) a DKVB model, picks the forget class (by default the best-learned one,
as the paper does), then runs every registered unlearning method the config names
(:mod:`dkvb_jax.experiment.method_rows`: UvA from the per-class histogram stored at training
time, UvE, exact removal from closed-form values on the same keys, ...), each masking method
with the smallest size its sweep finds reaching the target; then the optimisation baselines on a
linear head trained on the same embeddings (and fine-tuning on the DKVB values) until they forget
as much as DKVB or reach their epoch cap (:mod:`dkvb_jax.experiment.baseline_rows`). Every row
is measured the same way: accuracy on the four splits, SCRUB's membership-inference attack (with
its spread over folds), wall time and XLA-counted FLOPs.

    result = run_class_unlearning((x_tr, y_tr), (x_te, y_te), ExperimentConfig())
    print(result.table.to_markdown())
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _fingerprint
from dkvb_jax import baselines as bl
from dkvb_jax._fingerprint import arrays_sha256
from dkvb_jax._progress import progress_bar
from dkvb_jax.evaluation import (
    CostRecord,
    ResultRow,
    ResultsTable,
    deltas,
    evaluate_unlearning,
    membership_inference,
    per_class_accuracy,
)
from dkvb_jax.evaluation.table import default_reference, forget_target
from dkvb_jax.experiment.baseline_rows import (
    DKVB_FINETUNE,
    ORIGINAL_HEAD,
    BaselineRun,
    LinearHeadModel,
    dkvb_finetune_row,
    fit_head,
    head_rows,
)
from dkvb_jax.experiment.config import (
    BASELINE_NAMES,
    PAPER_RECIPE,
    RECIPES,
    ExperimentConfig,
    parse_overrides,
)
from dkvb_jax.experiment.fitting import FittedDKVB
from dkvb_jax.experiment.method_rows import ORIGINAL, ORIGINAL_CLOSED_FORM, Run, method_rows
from dkvb_jax.experiment.recipe import fit_from_config
from dkvb_jax.provenance import Rows
from dkvb_jax.unlearning import METHODS, AuditRecord, SweepResult, get_method, masking_methods
from dkvb_jax.unlearning.registry import DEFAULT_METHODS

# Names kept where they were: the config and the baselines' head live in their own modules.
__all__ = [
    "BASELINE_NAMES",
    "DKVB_FINETUNE",
    "DKVB_METHODS",
    "ORIGINAL_EXACT",
    "ORIGINAL_HEAD",
    "PAPER_RECIPE",
    "RECIPES",
    "ClassUnlearningResult",
    "ExperimentConfig",
    "LinearHeadModel",
    "best_learned_class",
    "fit_head",
    "parse_overrides",
    "run_class_unlearning",
    "sweep_subset",
]

DKVB_METHODS: tuple[str, ...] = DEFAULT_METHODS
ORIGINAL_EXACT = ORIGINAL_CLOSED_FORM


@dataclasses.dataclass(frozen=True)
class ClassUnlearningResult:
    """Everything one run measured.

    Attributes:
      table: one row per method (accuracies, MIA, cost); ``extra`` holds per-class test
        accuracy, deltas against the row's own original model, trajectories and audit records.
      sweeps: each masking method's :class:`SweepResult`, by method name (``'uva'``, ...).
      forget_classes: the classes forgotten.
      sizes: the size each masking method's sweep chose (N_a, N_e), by method name.
      fitted: the original DKVB model.
      unlearned: the variables of each unlearned DKVB model, by method name (a method reading
        label statistics, like ``'exact'``, forgets from the closed-form model, not `fitted`).
      audits: their audit records.
      config: the experiment configuration.
    """

    table: ResultsTable
    sweeps: dict[str, SweepResult]
    forget_classes: tuple[int, ...]
    sizes: dict[str, int]
    fitted: FittedDKVB | None
    unlearned: dict[str, dict]
    audits: dict[str, AuditRecord]
    config: ExperimentConfig

    def chosen(self, size_name: str) -> int | None:
        """The size chosen by the first method run whose size parameter is `size_name`
        (``'n_a'``, ``'n_e'``); None when none ran."""
        return _size_summary(self.sizes).get(size_name)

    @property
    def n_a(self) -> int | None:
        return self.chosen("n_a")

    @property
    def n_e(self) -> int | None:
        return self.chosen("n_e")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "forget_classes": list(self.forget_classes),
            **_size_summary(self.sizes),
            "sizes": dict(self.sizes),
            "sweeps": {k: dataclasses.asdict(s) for k, s in self.sweeps.items()},
            "table": self.table.to_dict(),
        }

    def save(self, directory: str | pathlib.Path, stem: str = "results") -> dict[str, str]:
        """Writes the table (``stem.md/.csv/.json``) and ``sweeps.json`` into `directory`."""
        directory = pathlib.Path(directory)
        paths = self.table.save(directory, stem)
        sweeps = directory / "sweeps.json"
        sweeps.write_text(json.dumps(self.to_dict()["sweeps"], indent=2))
        return {**paths, "sweeps": str(sweeps)}


def _size_summary(sizes: Mapping[str, int]) -> dict[str, int | None]:
    """``{size name: size}`` for every registered masking method's size name (``n_a``, ...):
    the size of the first method in `sizes` with that parameter, None if none ran."""
    out: dict[str, int | None] = {METHODS[m].size.name: None for m in masking_methods()}
    for method, n in sizes.items():
        name = get_method(method).size.name
        out[name] = n if out.get(name) is None else out[name]
    return out


# ----------------------------------------------------------------------------- helpers


def best_learned_class(per_class: Mapping[int, float]) -> int:
    """The class with the highest accuracy (lowest id on ties): the paper's forget class."""
    return min(per_class, key=lambda c: (-per_class[c], c))


def sweep_subset(x, y, forget, limit: int, seed: int):
    """At most `limit` forget-class rows and `limit` other rows, in their original order.

    A sweep ranks each row's N+1 nearest keys, so its memory and time grow with the rows.
    """
    rng = np.random.default_rng(seed)
    is_forget = np.isin(y, forget)
    keep = np.zeros(len(y), bool)
    for side in (is_forget, ~is_forget):
        rows = np.flatnonzero(side)
        keep[rng.choice(rows, min(limit, rows.size), replace=False)] = True
    return x[keep], y[keep]


# What a cached row holds and how it was measured; bump it when that changes, so that rows
# cached by an older version (e.g. baselines stopped on a plateau, no retain-train accuracy)
# are measured again rather than reused. 2: baselines run to the DKVB row's forget accuracy.
ROWS_VERSION = 2


def _run_id(config: ExperimentConfig, *arrays) -> str:
    return _fingerprint.sha256(
        f"rows v{ROWS_VERSION}",
        _fingerprint.json_sha256(config.to_dict()),
        arrays_sha256(*arrays),
        length=16,
    )


class _RowCache:
    """Finished rows on disk, so an interrupted run redoes only what is missing."""

    def __init__(self, directory: pathlib.Path | None, run_id: str):
        self.dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            stamp = directory / "run_id"
            if not stamp.is_file() or stamp.read_text() != run_id:
                for old in directory.glob("*.json"):
                    old.unlink()
                stamp.write_text(run_id)

    def _path(self, name: str) -> pathlib.Path:
        slug = "".join(ch if ch.isalnum() else "_" for ch in name)
        return self.dir / f"{slug}.json"

    def get(self, name: str) -> dict | None:
        if self.dir is None or not self._path(name).is_file():
            return None
        return json.loads(self._path(name).read_text())

    def put(self, name: str, value: dict) -> None:
        if self.dir is not None:
            tmp = self._path(name).with_suffix(".tmp")
            tmp.write_text(json.dumps(value, allow_nan=False))
            tmp.replace(self._path(name))

    def row(self, name: str, compute) -> ResultRow:
        """The stored row `name`, or ``compute()``'s, stored."""
        hit = self.get(name)
        if hit is not None:
            return ResultRow(**hit)
        row = compute()
        self.put(name, dataclasses.asdict(row) | {"extra": dict(row.extra)})
        return row


def _measure(
    method: str,
    apply_fn,
    variables,
    data: bl.UnlearningData,
    test: tuple[np.ndarray, np.ndarray],
    *,
    config: ExperimentConfig,
    cost: CostRecord | None,
    original: ResultRow | None,
    **extra: Any,
) -> ResultRow:
    """One row: accuracies on the four splits, the MIA, per-class test accuracy, the cost.

    `original` is the row of the model this one was unlearned from (None for an original):
    the row records its name and the accuracy deltas against it.
    """
    accs = evaluate_unlearning(apply_fn, variables, data)
    mia = None
    if config.mia:
        mia = membership_inference(
            apply_fn,
            variables,
            data.forget_x,
            data.forget_y,
            data.val_forget_x,
            data.val_forget_y,
            seed=config.seed,
        )
    per_class = per_class_accuracy(apply_fn, variables, jnp.asarray(test[0]), jnp.asarray(test[1]))
    extra = {"per_class_test_acc": {str(c): a for c, a in per_class.items()}, **extra}
    if original is not None:
        extra["original_row"] = original.method
        extra["delta_vs_original"] = deltas(accs, original.extra["accuracies"])
    return ResultRow.from_results(method, accs, mia=mia, cost=cost, **extra)


# ----------------------------------------------------------------------------- the experiment


def run_class_unlearning(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    config: ExperimentConfig | None = None,
    *,
    num_classes: int | None = None,
    key_data: np.ndarray | None = None,
    fitted: FittedDKVB | None = None,
    head: LinearHeadModel | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    cache_dir: str | pathlib.Path | None = None,
    encoder: str | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    dataset: str | None = None,
    key_rows: Rows | None = None,
) -> ClassUnlearningResult:
    """Runs the class-unlearning comparison and returns its results table.

    Args:
      train, test: embeddings `[n, dim]` and int labels `[n]` of the two splits.
      config: the experiment settings (default: ``ExperimentConfig()``).
      num_classes: label-space size (default: 1 + the largest label).
      key_data: unlabelled embeddings for key fitting (e.g. CIFAR-100 for a CIFAR-10 task);
        default: the training embeddings without labels.
      fitted: an already trained DKVB model (skips fitting; its config wins).
      head: an already trained linear head (skips training it).
      checkpoint_dir: resumable DKVB fitting (see :func:`fit_dkvb`).
      cache_dir: finished rows are stored here, so a rerun with the same inputs skips them.
      encoder: encoder name recorded in the checkpoint and table.
      meta: extra description stored in the table's JSON.
      progress: progress bars.
      dataset: row namespace of the training split (e.g. ``"cifar10/train"``), recorded in the
        model's provenance; certificates of exact removal need it.
      key_rows: the rows `key_data` are (e.g. ``Rows("cifar100/train", ids)``); without them
        a model fitted on `key_data` certifies nothing.
    """
    config = ExperimentConfig() if config is None else config
    x_tr, y_tr, x_te, y_te = _splits(train, test)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1 if num_classes is None else num_classes
    k_fit, k_head, k_base, k_perm = jax.random.split(jax.random.key(config.seed), 4)
    total = 2 + len(config.methods) + config.dkvb_finetune + len(config.baselines)
    steps = progress_bar(total=total, desc="class unlearning", disable=not progress)

    def step(name: str) -> None:
        steps.update()
        steps.set_postfix_str(name)

    steps.set_postfix_str("fit DKVB")
    fitted, train_ids = _fit(
        config,
        fitted,
        x_tr,
        y_tr,
        num_classes=num_classes,
        key=k_fit,
        dataset=dataset,
        key_data=key_data,
        key_rows=key_rows,
        encoder=encoder,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    # Held-out rows fitted the frozen parts only: the values' training data is the rest.
    x_tr, y_tr = x_tr[train_ids], y_tr[train_ids]
    model, variables = fitted.model, fitted.variables
    cache = _RowCache(
        None if cache_dir is None else pathlib.Path(cache_dir),
        _run_id(config, x_tr, y_tr, x_te, y_te, *jax.tree.leaves(variables)),
    )
    forget = _forget_classes(config, model, variables, (x_te, y_te), num_classes)
    run = _method_run(config, fitted, (x_tr, y_tr, train_ids), (x_te, y_te), forget, k_perm, cache)
    original = cache.row(
        ORIGINAL,
        lambda: run.measure(
            ORIGINAL, model.apply, variables, cost=None, original=None, model="dkvb"
        ),
    )
    dkvb = method_rows(run, original, config.methods, step=step)

    # The baselines run until they forget as much as the DKVB method the table costs them
    # against (its measured forget-test accuracy), or to their cap.
    rows = {ORIGINAL: original, **dkvb.rows}
    reference = default_reference(rows)
    baselines = BaselineRun(
        train=(x_tr, y_tr),
        test=(x_te, y_te),
        forget=forget,
        config=config,
        target=None if reference is None else forget_target(rows[reference].forget_test_acc),
        key=k_base,
        head_key=k_head,
        progress=progress,
        measure=functools.partial(_measure, config=config),
        cached_row=cache.row,
        step=step,
    )
    if config.dkvb_finetune:
        rows[DKVB_FINETUNE] = dkvb_finetune_row(baselines, model, variables, run.data, original)
    cached = all(cache.get(name) is not None for name in (ORIGINAL_HEAD, *config.baselines))
    rows.update(head_rows(baselines, head, num_classes, cached=cached))
    steps.update()
    steps.close()
    meta = {
        "forget_classes": list(forget),
        **_size_summary(dkvb.sizes),
        "encoder": encoder,
        "model": model.config.to_dict(),
        "experiment": config.to_dict(),
        "train_examples": int(x_tr.shape[0]),
        "test_examples": int(x_te.shape[0]),
        **dict(meta or {}),
    }
    table = _table(rows, dkvb.rows, reference, meta)
    return ClassUnlearningResult(
        table, forget_classes=forget, fitted=fitted, config=config, **dkvb.outputs()
    )


def _method_run(config, fitted, train, test, forget, key, cache) -> Run:
    """What the DKVB rows share: the splits, the forget rows in a random order (from `key`),
    the sweep subset and how rows are measured and cached."""
    x_tr, y_tr, _ = train
    data = bl.class_unlearning_data(x_tr, y_tr, forget, val_x=test[0], val_y=test[1])
    perm = np.asarray(jax.random.permutation(key, data.forget_x.shape[0]))
    split = (x_tr, y_tr) if config.sweep_split == "train" else test
    return Run(
        fitted=fitted,
        train=train,
        data=data,
        forget=forget,
        forget_x=np.asarray(data.forget_x)[perm],
        sweep_split=sweep_subset(*split, forget, config.sweep_max_examples, config.seed),
        config=config,
        measure=functools.partial(_measure, data=data, test=test, config=config),
        cached_row=cache.row,
    )


def _table(rows, dkvb_rows, reference, meta) -> ResultsTable:
    """The originals and the baselines first, then each DKVB method after its own original."""
    order = [ORIGINAL, ORIGINAL_HEAD, *BASELINE_NAMES, DKVB_FINETUNE, *dkvb_rows]
    ordered = [rows[name] for name in order if name in rows]
    return ResultsTable.from_rows(ordered, reference=reference, meta=meta, sort=False)


def _fit(config, fitted, x, y, **fit_kw) -> tuple[FittedDKVB, np.ndarray]:
    """The DKVB model (fitted by the config's recipe unless given) and the rows of `x` its values
    are fitted on (without the held-out rows that fitted the frozen parts only)."""
    if fitted is not None:
        return fitted, np.arange(len(x))
    fit = fit_from_config(config, x, y, **fit_kw)
    return fit.fitted, fit.rows


def _splits(train, test):
    """The two splits as float32 embeddings and int32 labels, checked."""
    x_tr, y_tr = np.asarray(train[0], np.float32), np.asarray(train[1]).astype(np.int32)
    x_te, y_te = np.asarray(test[0], np.float32), np.asarray(test[1]).astype(np.int32)
    for name, (x, y) in (("train", (x_tr, y_tr)), ("test", (x_te, y_te))):
        bl.types.validate_split(x, y, name)
    if x_te.shape[1] != x_tr.shape[1]:
        raise ValueError(
            f"train and test embeddings differ in dimension ({x_tr.shape[1]} vs {x_te.shape[1]}); "
            "use the same encoder for both."
        )
    return x_tr, y_tr, x_te, y_te


def _forget_classes(config, model, variables, test, num_classes: int) -> tuple[int, ...]:
    """The config's forget classes, or the class the model learned best (the paper's rule)."""
    if config.forget_classes is None:
        per_class = per_class_accuracy(
            model.apply, variables, jnp.asarray(test[0]), jnp.asarray(test[1])
        )
        return (best_learned_class(per_class),)
    if max(config.forget_classes) >= num_classes:
        raise ValueError(
            f"forget class(es) {list(config.forget_classes)} outside the {num_classes} classes "
            "of the data."
        )
    return tuple(config.forget_classes)
