"""Smoke test of experiments/benchmarks/unlearning_cost.py on tiny synthetic data (no timings
are checked: speed claims belong in the benchmark's own output)."""

import json
import math

from script_testutil import load_script


def test_every_method_gets_a_row_with_costs(tmp_path):
    bench = load_script("experiments/benchmarks/unlearning_cost.py", "unlearning_cost")
    out = tmp_path / "cost.json"
    bench.main(
        [
            "--synthetic",
            "--codebooks",
            "4",
            "--keys",
            "32",
            "--embed",
            "16",
            "--key-rows",
            "300",
            "--ft-max-epochs",
            "3",
            "--head-epochs",
            "2",
            "--out",
            str(out),
        ]
    )
    rows = {r["method"].split(" ")[0]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        "dkvb-histogram",
        "dkvb-usage-collection",
        "dkvb-data-pass",
        "dkvb-every-class",
        "finetune",
        "retrain",
        "neggrad+",
        "scrub",
    }
    for row in rows.values():
        assert row["wall s"] > 0 and row["FLOPs"] > 0
    core, collection = rows["dkvb-histogram"], rows["dkvb-usage-collection"]
    # Collecting the histogram is a lookup of every training row: far more than forgetting from it.
    assert collection["FLOPs"] > core["FLOPs"]
    target = json.loads(out.read_text())["baseline_forget_target"]
    for name in ("finetune", "retrain", "neggrad+", "scrub"):
        row = rows[name]
        assert row["reached DKVB forget acc"] == (row["forget-train acc"] <= target)
        assert "plateau" not in row["method"]
        # Ratios and the retain comparison only at equal forgetting.
        assert ("FLOPs vs DKVB core" in row) is row["reached DKVB forget acc"]
        if row["reached DKVB forget acc"]:
            assert math.isclose(row["FLOPs vs DKVB core"], row["FLOPs"] / core["FLOPs"])
            assert math.isclose(
                row["FLOPs vs DKVB core + collection"],
                row["FLOPs"] / (core["FLOPs"] + collection["FLOPs"]),
            )
            assert math.isclose(
                row["retain-test vs DKVB (pts)"],
                100 * (row["retain-test acc"] - core["retain-test acc"]),
            )
