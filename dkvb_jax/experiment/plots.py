"""Figures of a class-unlearning run, as PNG files (matplotlib, no display needed).

- ``sweep_<method>.png`` (``sweep_uva.png``, ``sweep_uve.png``, ...): forget and retain accuracy
  against each masking method's size (N_a, N_e) on the sweep split (the paper's Figures 2-3),
  with the original model's accuracy on the same rows;
- ``accuracy_vs_cost.png``: retain and forget test accuracy against log GFLOPs, every method,
  coloured by the original model it starts from (DKVB, its closed form, or the linear head),
  each original drawn as a reference line;
- ``per_class.png``: per-class test accuracy of the original model and of each unlearned one.

Method labels are placed so that none overprints another (:func:`place_labels`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from dkvb_jax.evaluation import ResultRow, ResultsTable  # noqa: E402
from dkvb_jax.evaluation.table import dkvb_row_name  # noqa: E402
from dkvb_jax.unlearning import METHODS, SweepResult  # noqa: E402

# The original model a row starts from (its ``extra["model"]``): colour and legend name.
ORIGINALS = {
    "dkvb": ("C0", "DKVB original"),
    "dkvb closed form": ("C2", "DKVB closed-form original"),
    "linear head": ("C3", "linear-head original"),
}


def _method_name(method: str) -> str:
    """A registered method's label (one spelling in every figure), else `method` itself."""
    spec = METHODS.get(method)
    return method if spec is None else spec.label


def _size_label(method: str) -> str:
    """The sweep axis: the method's size parameter and what it counts, e.g. ``N_a (keys ...)``."""
    spec = METHODS.get(method)
    if spec is None or spec.size is None:
        return "N"
    name = spec.size.name
    return f"{name[:1].upper()}{name[1:]} ({spec.size.description})"


def _sweep_axes(ax, ns, method: str, original, split: str | None, title: str) -> None:
    """Shared decoration of the sweep plots; `original` = (forget, retain) before unlearning."""
    if original is not None:
        for value, name, color in zip(original, ("forget", "retain"), ("C0", "C1"), strict=True):
            ax.axhline(
                100 * value,
                color=color,
                ls="--",
                lw=1,
                alpha=0.7,
                label=f"original, {name} classes ({100 * value:.1f}%)",
            )
    ax.set_xscale("log")
    ax.set_xlabel(_size_label(method))
    ax.set_ylabel("accuracy (%)" if split is None else f"accuracy on the {split} split (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # Below the axes: a legend inside would hide the curves it explains.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncols=2)


def plot_sweep(
    sweep: SweepResult,
    path: str | pathlib.Path,
    *,
    title: str | None = None,
    split: str | None = None,
) -> str:
    """Forget / retain accuracy along an N_a or N_e sweep (log-scaled N).

    Args:
      sweep: the sweep; its ``baseline`` (the original model on the same rows) is drawn as
        dashed reference lines.
      path: the PNG to write.
      title: default: the method and the split.
      split: the split the sweep measured (``train`` or ``test``), named in the title and axis.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot(
        sweep.ns, 100 * np.asarray(sweep.forget_accuracy), "o-", color="C0", label="forget classes"
    )
    ax.plot(
        sweep.ns, 100 * np.asarray(sweep.retain_accuracy), "s-", color="C1", label="retain classes"
    )
    if sweep.smallest_n is not None:
        ax.axvline(sweep.smallest_n, color="grey", ls=":", label=f"smallest N = {sweep.smallest_n}")
    where = "" if split is None else f" on the {split} split"
    default = f"DKVB {_method_name(sweep.method)} sweep{where}"
    _sweep_axes(ax, sweep.ns, sweep.method, sweep.baseline, split, title or default)
    return _save(fig, path)


def plot_mean_sweep(
    ns: Sequence[int],
    forget: np.ndarray,
    retain: np.ndarray,
    path: str | pathlib.Path,
    *,
    method: str,
    title: str | None = None,
    original: tuple[float, float] | None = None,
    split: str | None = None,
) -> str:
    """Mean and spread (min-max band) of sweeps over several classes/seeds; arrays `[runs, ns]`.

    Args:
      original: mean (forget, retain) accuracy of the original models on the same rows.
      split: the split the sweeps measured; named in the title and axis.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for arr, label, marker, color in (
        (forget, "forget classes", "o-", "C0"),
        (retain, "retain classes", "s-", "C1"),
    ):
        arr = 100 * np.asarray(arr)
        ax.plot(ns, arr.mean(0), marker, color=color, label=f"{label} (mean)")
        ax.fill_between(ns, arr.min(0), arr.max(0), color=color, alpha=0.2)
    where = "" if split is None else f" on the {split} split"
    default = f"DKVB {_method_name(method)} sweep{where}, mean and range over runs"
    _sweep_axes(ax, ns, method, original, split, title or default)
    return _save(fig, path)


def _family(row: ResultRow) -> str:
    """The original model a row starts from (the table's ``model`` entry, else by name)."""
    model = (row.extra or {}).get("model")
    if model in ORIGINALS:
        return model
    return "dkvb" if row.method.startswith("DKVB") else "linear head"


def accuracy_vs_cost_figure(table: ResultsTable):
    """The accuracy-vs-cost figure (see :func:`plot_accuracy_vs_cost`); returns the Figure."""
    costed = [r for r in table.rows if r.flops is not None and r.flops > 0]
    originals = [r for r in table.rows if r.method.startswith("original")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True)
    panels = (
        (axes[0], "retain_test_acc", "retain-test accuracy (%)"),
        (axes[1], "forget_test_acc", "forget-test accuracy (%)"),
    )
    points: list[list] = [[], []]  # per axes, labelled once the layout is final
    for i, (ax, key, name) in enumerate(panels):
        for row in originals:
            if getattr(row, key) is not None:
                color, label = ORIGINALS[_family(row)]
                ax.axhline(100 * getattr(row, key), color=color, ls="--", lw=1, label=label)
        for row in costed:
            if getattr(row, key) is None:
                continue
            dkvb = _family(row) != "linear head"
            xy = (row.flops / 1e9, 100 * getattr(row, key))
            ax.scatter(
                *xy,
                marker="*" if dkvb else "o",
                s=90 if dkvb else 40,
                color=ORIGINALS[_family(row)][0],
                zorder=3,
            )
            points[i].append((row.method, xy))
        ax.set_xscale("log")
        ax.set_xlabel("cost (GFLOPs, log scale)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        ax.set_title(name.replace(" (%)", ""), fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncols=len(handles),
            fontsize=8,
            title="reference lines: the original each method starts from",
        )
    fig.suptitle("test accuracy vs unlearning cost (marker colour = original model)")
    fig.tight_layout(rect=(0, 0.14 if handles else 0, 1, 1))
    for i, ax in enumerate(axes):
        place_labels(ax, points[i])
    return fig


def plot_accuracy_vs_cost(table: ResultsTable, path: str | pathlib.Path) -> str:
    """Retain and forget test accuracy against GFLOPs (log scale) for every costed method.

    Each original model (DKVB, its closed form, the linear head) is a dashed reference line in
    its colour, and each method's marker has the colour of the original it starts from.
    """
    return _save(accuracy_vs_cost_figure(table), path, layout=False)


# Offsets (points) tried in turn for a label: eight directions at growing distances.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
# Half the size of a plotted marker (a 90 pt^2 star), kept free of labels.
_MARKER_RADIUS_PT = 5.0
_OFFSETS = tuple((6 * r * dx, 6 * r * dy) for r in range(1, 9) for dx, dy in _DIRECTIONS)


def place_labels(ax, points: Sequence[tuple[str, tuple[float, float]]], fontsize: int = 7):
    """Annotates each `(text, (x, y))` at the first offset where it overlaps no earlier label
    and no marker.

    Deterministic (a fixed order of offsets, labels in the given order); each label stays
    inside the axes and is joined to its point by a thin line when moved away from it. When
    no offset is free (more labels than room), the last one tried is kept. Call it once the
    layout is final: offsets are in points, so a later re-layout can move labels together.

    Returns:
      The annotation artists, in the order of `points`.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    half = _MARKER_RADIUS_PT * fig.dpi / 72
    placed = [
        Bbox.from_bounds(px - half, py - half, 2 * half, 2 * half)
        for px, py in ax.transData.transform([xy for _, xy in points]).reshape(-1, 2)
    ]
    artists = []
    for text, xy in points:
        for i, (dx, dy) in enumerate(_OFFSETS):
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            ann = ax.annotate(
                text,
                xy,
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha=ha,
                va=va,
                arrowprops=None if i < len(_DIRECTIONS) else dict(arrowstyle="-", lw=0.5),
            )
            box = ann.get_window_extent(renderer)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(b) for b in placed):
                break
            if i < len(_OFFSETS) - 1:
                ann.remove()
        placed.append(box)
        artists.append(ann)
    return artists


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
    ax.set_title("per-class test accuracy before / after unlearning (* = forgotten)")
    ax.legend(fontsize=7, ncols=min(len(methods), 4))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def save_plots(
    result, directory: str | pathlib.Path, *, class_names: Sequence[str] | None = None
) -> dict[str, str]:
    """All figures of a :class:`ClassUnlearningResult` into `directory`; returns name -> path."""
    directory = pathlib.Path(directory)
    paths = {}
    split = getattr(result.config, "sweep_split", None)
    for method, sweep in result.sweeps.items():
        paths[f"sweep_{method}"] = plot_sweep(sweep, directory / f"sweep_{method}.png", split=split)
    paths["accuracy_vs_cost"] = plot_accuracy_vs_cost(
        result.table, directory / "accuracy_vs_cost.png"
    )
    # The original and what each registered method (and fine-tuning) made of it.
    wanted = (
        "original",
        *(dkvb_row_name(m) for m in METHODS.values()),
        "finetune",
        "DKVB-finetune",
    )
    per_class = {
        row.method: row.extra["per_class_test_acc"]
        for row in result.table.rows
        if row.method in wanted and "per_class_test_acc" in row.extra
    }
    if per_class:
        paths["per_class"] = plot_per_class(
            per_class,
            directory / "per_class.png",
            class_names=class_names,
            forget_classes=result.forget_classes,
        )
    return paths


def _save(fig, path: str | pathlib.Path, *, layout: bool = True) -> str:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
