"""Figures of a class-unlearning run, as PNG files (matplotlib, no display needed).

- ``sweep_uva.png`` / ``sweep_uve.png``: forget and retain accuracy against N_a and N_e (the
  paper's Figures 2-3);
- ``accuracy_vs_cost.png``: retain and forget test accuracy against log GFLOPs, every method;
- ``per_class.png``: per-class test accuracy of the original model and of each unlearned one.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dkvb_jax.evaluation import ResultsTable  # noqa: E402
from dkvb_jax.unlearning import SweepResult  # noqa: E402

_LABELS = {"uva": "N_a (keys masked per codebook)", "uve": "N_e (forget examples used)"}


def plot_sweep(sweep: SweepResult, path: str | pathlib.Path, *, title: str | None = None) -> str:
    """Forget / retain accuracy along an N_a or N_e sweep (log-scaled N)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sweep.ns, 100 * np.asarray(sweep.forget_accuracy), "o-", label="forget classes")
    ax.plot(sweep.ns, 100 * np.asarray(sweep.retain_accuracy), "s-", label="retain classes")
    if sweep.smallest_n is not None:
        ax.axvline(sweep.smallest_n, color="grey", ls=":", label=f"smallest N = {sweep.smallest_n}")
    ax.set_xscale("log")
    ax.set_xlabel(_LABELS.get(sweep.method, "N"))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title or f"DKVB {sweep.method.upper()} sweep")
    ax.legend(loc="center left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_mean_sweep(
    ns: Sequence[int],
    forget: np.ndarray,
    retain: np.ndarray,
    path: str | pathlib.Path,
    *,
    method: str,
    title: str | None = None,
) -> str:
    """Mean and spread (min-max band) of sweeps over several classes/seeds; arrays `[runs, ns]`."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arr, label, marker in ((forget, "forget classes", "o-"), (retain, "retain classes", "s-")):
        arr = 100 * np.asarray(arr)
        ax.plot(ns, arr.mean(0), marker, label=label)
        ax.fill_between(ns, arr.min(0), arr.max(0), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel(_LABELS.get(method, "N"))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title or f"DKVB {method.upper()} sweep, mean and range over runs")
    ax.legend(loc="center left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_cost(table: ResultsTable, path: str | pathlib.Path) -> str:
    """Retain and forget test accuracy against GFLOPs (log scale) for every costed method."""
    recs = [r for r in table.records() if r["gflops"] is not None and r["gflops"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for ax, key, name in (
        (axes[0], "retain_test_acc", "retain-test accuracy (%)"),
        (axes[1], "forget_test_acc", "forget-test accuracy (%)"),
    ):
        for rec in recs:
            if rec[key] is None:
                continue
            dkvb = rec["method"].startswith("DKVB")
            ax.scatter(
                rec["gflops"], 100 * rec[key], marker="*" if dkvb else "o", s=90 if dkvb else 40
            )
            ax.annotate(rec["method"], (rec["gflops"], 100 * rec[key]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("cost (GFLOPs, log scale)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle("accuracy vs unlearning cost")
    return _save(fig, path)


def plot_per_class(
    per_class: Mapping[str, Mapping[str | int, float]],
    path: str | pathlib.Path,
    *,
    class_names: Sequence[str] | None = None,
    forget_classes: Sequence[int] = (),
) -> str:
    """Grouped bars of per-class test accuracy, one group per class, one bar per method."""
    methods = list(per_class)
    classes = sorted({int(c) for m in methods for c in per_class[m]})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * max(1, len(methods) / 2)), 3.8))
    xs = np.arange(len(classes))
    for i, m in enumerate(methods):
        vals = [100 * float(per_class[m].get(str(c), per_class[m].get(c, np.nan))) for c in classes]
        ax.bar(xs + i * width - 0.4 + width / 2, vals, width, label=m)
    names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes]
    names = [
        f"{n}*" if c in set(forget_classes) else n for n, c in zip(names, classes, strict=True)
    ]
    ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-class accuracy before / after unlearning (* = forgotten)")
    ax.legend(fontsize=7, ncols=min(len(methods), 4))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def save_plots(
    result, directory: str | pathlib.Path, *, class_names: Sequence[str] | None = None
) -> dict[str, str]:
    """All figures of a :class:`ClassUnlearningResult` into `directory`; returns name -> path."""
    directory = pathlib.Path(directory)
    paths = {}
    for method, sweep in result.sweeps.items():
        paths[f"sweep_{method}"] = plot_sweep(sweep, directory / f"sweep_{method}.png")
    paths["accuracy_vs_cost"] = plot_accuracy_vs_cost(
        result.table, directory / "accuracy_vs_cost.png"
    )
    wanted = ("original", "DKVB-UvA", "DKVB-UvE", "DKVB-exact", "finetune", "DKVB-finetune")
    per_class = {
        row.method: row.extra["per_class_test_acc"]
        for row in result.table.rows
        if row.method in wanted and "per_class_test_acc" in row.extra
    }
    if per_class:
        paths["per_class"] = plot_per_class(
            per_class, directory / "per_class.png", class_names=class_names,
            forget_classes=result.forget_classes,
        )  # fmt: skip
    return paths


def _save(fig, path: str | pathlib.Path) -> str:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
