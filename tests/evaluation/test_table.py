"""The results table renders and round-trips with the paper's rows."""

import csv
import math

import pytest

from dkvb_jax.evaluation import CostRecord, MIAResult, ResultRow, ResultsTable

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
    lines = md.splitlines()
    assert "retain-test acc (%)" in lines[0] and "cost vs DKVB" in lines[0]
    assert len(lines) == 2 + 5
    assert "| scrub" in md and "90x" in md and "93.00" in md


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
        ResultRow.from_results("DKVB-UvA", ACCS, cost=CostRecord("u", wall_s=0.1,
                                                                 forward_flops=1e8)),  # fmt: skip
        ResultRow.from_results("finetune", {**ACCS, "forget_test": forget},
                               cost=CostRecord("f", wall_s=1.0, forward_flops=9e9)),  # fmt: skip
    ]
    table = ResultsTable.from_rows(rows)
    rec = {r["method"]: r for r in table.records()}["finetune"]
    assert rec["reached"] is reached and rec["cost_vs_dkvb"] == cost
    line = next(s for s in table.to_markdown().splitlines() if s.startswith("| finetune"))
    assert ("| yes " if reached else "| no ") in line and (("90x" in line) is reached)
