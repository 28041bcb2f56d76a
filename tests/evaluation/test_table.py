"""The results table renders and round-trips with the paper's rows."""

import csv
import math

import pytest

from dkvb_jax.evaluation import CostRecord, MIAResult, ResultRow, ResultsTable
from dkvb_jax.evaluation.table import NOISE_MARK

ACCS = {"retain_test": 0.9, "forget_test": 0.0, "retain_train": 0.95, "forget_train": 0.0}


def make_table():
    cost = CostRecord("scrub", wall_s=2.0, forward_flops=3e9, backward_flops=6e9)
    rows = [
        ResultRow.from_results(
            "DKVB-UvE", ACCS, mia=0.52, cost=CostRecord("u", wall_s=0.2, forward_flops=2e8)
        ),
        ResultRow.from_results("scrub", ACCS, mia=MIAResult(0.55, 0.02, 40, 5), cost=cost),
        ResultRow.from_results("original", {"retain_test": 0.91, "forget_test": 0.93}, mia=0.7),
        ResultRow.from_results(
            "DKVB-UvA", ACCS, mia=0.5, cost=CostRecord("u", wall_s=0.1, forward_flops=1e8)
        ),
        ResultRow.from_results("my-method", ACCS),
    ]
    return ResultsTable.from_rows(rows, meta={"dataset": "synthetic"})


def test_rows_ordered_and_cost_relative_to_uva():
    table = make_table()
    assert table.methods == ["original", "scrub", "DKVB-UvA", "DKVB-UvE", "my-method"]
    assert table.reference == "DKVB-UvA"
    rel = {r["method"]: r["cost_vs_dkvb"] for r in table.records()}
    assert rel == {
        "original": None,
        "scrub": pytest.approx(90.0),
        "DKVB-UvA": 1.0,
        "DKVB-UvE": 2.0,
        "my-method": None,
    }


def test_markdown_has_headers_and_every_row():
    md = make_table().to_markdown()
    lines = md.split("\n\n")[0].splitlines()
    assert "retain-test acc (%)" in lines[0] and "cost vs DKVB" in lines[0]
    assert "retain-train acc (%)" in lines[0]
    assert len(lines) == 2 + 5
    assert "| scrub" in md and "90x" in md and "93.00" in md
    # Retain-train beside retain-test; the MIA with its fold spread and examples per side.
    cells = next(line for line in lines if line.startswith("| scrub")).split("|")
    assert [c.strip() for c in cells[2:6]] == ["90.00", "95.00", "0.00", "55.0 ± 2.0 (40)"]
    assert "Cost vs DKVB: FLOPs over DKVB-UvA's" in md


def _mia_table(original, unlearned):
    rows = [
        ResultRow.from_results("original", ACCS, mia=original),
        ResultRow.from_results(
            "DKVB-UvA",
            ACCS,
            mia=unlearned,
            original_row="original",
            cost=CostRecord("u", forward_flops=1e8),
        ),
    ]
    return ResultsTable.from_rows(rows)


@pytest.mark.parametrize(
    "original, unlearned, noise",
    [
        # The case: 61% -> 57% with a fold std of about 5 points is no evidence.
        (MIAResult(0.61, 0.05, 50, 5), MIAResult(0.57, 0.04, 50, 5), True),
        (MIAResult(0.80, 0.01, 1000, 5), MIAResult(0.52, 0.01, 1000, 5), False),
        (0.8, 0.5, None),  # bare accuracies carry no spread: nothing to say
    ],
    ids=["within-noise", "real-change", "no-spread"],
)
def test_mia_change_within_noise_is_marked(original, unlearned, noise):
    table = _mia_table(original, unlearned)
    rec = {r["method"]: r for r in table.records()}["DKVB-UvA"]
    assert rec["mia_within_noise"] is noise
    md = table.to_markdown()
    line = next(s for s in md.splitlines() if s.startswith("| DKVB-UvA"))
    assert (NOISE_MARK in line) is bool(noise) and ("within noise" in md) is bool(noise)
    if noise is not None:
        assert rec["mia_std"] == unlearned.std and rec["mia_n_per_side"] == unlearned.n_per_side


def test_reference_prefers_dkvb_unlearning_rows_over_dkvb_finetune():
    rows = [ResultRow(m) for m in ("original", "DKVB-finetune", "DKVB-exact", "DKVB-UvE")]
    assert ResultsTable.from_rows(rows).reference == "DKVB-UvE"
    assert ResultsTable.from_rows(rows[:3]).reference == "DKVB-exact"
    assert ResultsTable.from_rows(rows[:2]).reference == "DKVB-finetune"
    assert ResultsTable.from_rows(rows[:1]).reference is None


def test_reached_cell_gives_a_trained_baselines_epochs():
    cost = CostRecord("f", forward_flops=9e9).with_extra(epochs=10, stop_reason="max_epochs")
    rows = [
        ResultRow.from_results("DKVB-UvA", ACCS, cost=CostRecord("u", forward_flops=1e8)),
        ResultRow.from_results("finetune", {**ACCS, "forget_test": 0.5}, cost=cost),
    ]
    line = next(
        s
        for s in ResultsTable.from_rows(rows).to_markdown().splitlines()
        if s.startswith("| finetune")
    )
    assert "| no (10 ep) " in line and line.rstrip(" |").endswith("-")


def test_save_csv_json_and_round_trip(tmp_path):
    table = make_table()
    paths = table.save(tmp_path)
    loaded = ResultsTable.load_json(paths["json"])
    assert loaded == table
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == table.methods
    assert rows[0]["wall_s"] == "" and float(rows[1]["gflops"]) == pytest.approx(9.0)
    assert open(paths["md"]).read().strip() == table.to_markdown()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mia": math.nan}, "finite"),
        ({"retain_test_acc": 1.5}, r"\[0, 1\]"),
        ({"retain_train_acc": -0.1}, r"retain_train_acc must be a fraction in \[0, 1\]"),
        ({"wall_s": -1.0}, ">= 0"),
        ({"method": ""}, "non-empty"),
    ],
)
def test_row_rejects_nan_and_out_of_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResultRow(**({"method": "x"} | kwargs))


def test_table_rejects_duplicates_and_unknown_reference(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        ResultsTable.from_rows([ResultRow("a"), ResultRow("a")])
    with pytest.raises(ValueError, match="not a row"):
        ResultsTable.from_rows([ResultRow("a")], reference="DKVB-UvA")
    with pytest.raises(FileNotFoundError):
        ResultsTable.load_json(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "forget, reached, cost",
    [(0.0, True, pytest.approx(90.0)), (0.01, True, pytest.approx(90.0)), (0.5, False, None)],
    ids=["forgot-as-much", "within-tolerance", "forgot-less"],
)
def test_no_cost_ratio_for_a_row_that_did_not_forget_as_much(forget, reached, cost):
    rows = [
        ResultRow.from_results(
            "DKVB-UvA", ACCS, cost=CostRecord("u", wall_s=0.1, forward_flops=1e8)
        ),
        ResultRow.from_results(
            "finetune",
            {**ACCS, "forget_test": forget},
            cost=CostRecord("f", wall_s=1.0, forward_flops=9e9),
        ),
    ]
    table = ResultsTable.from_rows(rows)
    rec = {r["method"]: r for r in table.records()}["finetune"]
    assert rec["reached"] is reached and rec["cost_vs_dkvb"] == cost
    line = next(s for s in table.to_markdown().splitlines() if s.startswith("| finetune"))
    assert ("| yes " if reached else "| no ") in line and (("90x" in line) is reached)
