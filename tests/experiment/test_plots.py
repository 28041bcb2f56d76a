"""Figures say what they compare: reference originals, split, one spelling, no overprinting."""

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest

from dkvb_jax.evaluation import ResultRow, ResultsTable
from dkvb_jax.experiment import plots
from dkvb_jax.unlearning import METHODS, SweepResult, masking_methods

# Costs and accuracies a few percent apart: naive labels at one fixed offset would overprint.
COSTED = [
    ("retrain", "linear head", 3.6, 0.84, 0.0),
    ("finetune", "linear head", 1.2, 0.838, 0.016),
    ("neggrad+", "linear head", 0.48, 0.829, 0.0),
    ("scrub", "linear head", 0.43, 0.832, 0.0),
    ("DKVB-finetune", "dkvb", 0.45, 0.831, 0.001),
    ("DKVB-UvA", "dkvb", 0.016, 0.8324, 0.0),
    ("DKVB-UvE", "dkvb", 0.017, 0.8334, 0.0),
    ("DKVB-exact", "dkvb closed form", 0.018, 0.8332, 0.0),
]
ORIGINALS = [
    ("original", "dkvb", 0.8242, 0.908),
    ("original (linear head)", "linear head", 0.8288, 0.907),
    ("original (DKVB closed form)", "dkvb closed form", 0.8239, 0.897),
]


@pytest.fixture
def table():
    rows = [ResultRow(m, r, f, extra={"model": k}) for m, k, r, f in ORIGINALS]
    rows += [
        ResultRow(m, r, f, flops=g * 1e9, wall_s=0.1, extra={"model": k})
        for m, k, g, r, f in COSTED
    ]
    return ResultsTable.from_rows(rows, sort=False)


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, layout=True: figs.append(fig) or path)
    yield figs
    for fig in figs:
        plt.close(fig)


def _texts(ax):
    return [t for t in ax.texts if t.get_text()]


def test_accuracy_vs_cost_labels_every_method_once_without_overlap(table):
    fig = plots.accuracy_vs_cost_figure(table)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = _texts(ax)
        assert sorted(t.get_text() for t in texts) == sorted(m for m, *_ in COSTED)
        boxes = [t.get_window_extent(renderer) for t in texts]
        frame = ax.get_window_extent(renderer)
        for a, b in itertools.combinations(range(len(boxes)), 2):
            assert not boxes[a].overlaps(boxes[b]), (texts[a].get_text(), texts[b].get_text())
        for box in boxes:
            assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
    plt.close(fig)


def test_accuracy_vs_cost_draws_each_original_as_a_reference_line(table):
    fig = plots.accuracy_vs_cost_figure(table)
    retain_ax, forget_ax = fig.axes[:2]
    for ax, col in ((retain_ax, 2), (forget_ax, 3)):
        lines = {ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines()}
        for _, model, *accs in ORIGINALS:
            name = plots.ORIGINALS[model][1]
            assert lines[name] == pytest.approx(100 * accs[col - 2])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["DKVB original", "linear-head original", "DKVB closed-form original"]
    plt.close(fig)


def test_place_labels_is_deterministic(table):
    def positions():
        fig = plots.accuracy_vs_cost_figure(table)
        out = [t.get_position() + tuple(t.xyann) for ax in fig.axes for t in _texts(ax)]
        plt.close(fig)
        return out

    assert positions() == positions()


@pytest.mark.parametrize("method", masking_methods())
def test_sweep_titles_name_the_method_and_split_and_draw_the_original(captured, method):
    """Every registered masking method: its label in the title, its size on the axis."""
    name, size = METHODS[method].label, METHODS[method].size
    sweep = SweepResult(method, [1, 2, 4], [0.5, 0.2, 0.0], [0.8, 0.8, 0.79], (0.9, 0.81), 0.0, 4)
    plots.plot_sweep(sweep, "unused.png", split="train")
    plots.plot_mean_sweep(
        [1, 2, 4],
        np.zeros((2, 3)),
        np.ones((2, 3)),
        "unused.png",
        method=method,
        original=(0.9, 0.81),
        split="train",
    )
    for fig in captured:
        ax = fig.axes[0]
        title = ax.get_title()
        assert name in title and "train split" in title and name.upper() not in title
        assert "train split" in ax.get_ylabel()
        assert ax.get_xlabel() == f"{size.name.capitalize()} ({size.description})"
        refs = [ln for ln in ax.get_lines() if ln.get_label().startswith("original")]
        assert sorted(ln.get_ydata()[0] for ln in refs) == pytest.approx([81.0, 90.0])
