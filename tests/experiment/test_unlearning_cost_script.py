"""Smoke test of experiments/benchmarks/unlearning_cost.py on tiny synthetic data (no timings
are checked: speed claims belong in the benchmark's own output)."""

import json
import math

from script_testutil import load_script


def test_every_method_gets_a_row_with_costs(tmp_path):
    bench = load_script("experiments/benchmarks/unlearning_cost.py", "unlearning_cost")
    out = tmp_path / "cost.json"
    bench.main(["--synthetic", "--codebooks", "4", "--keys", "32", "--embed", "16",
                "--key-rows", "300", "--ft-max-epochs", "3", "--head-epochs", "2",
                "--out", str(out)])  # fmt: skip
    rows = {r["method"].split(" ")[0]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dkvb-histogram", "dkvb-data-pass", "dkvb-every-class", "finetune",
                         "retrain", "neggrad+", "scrub"}  # fmt: skip
    for row in rows.values():
        assert row["wall s"] > 0 and row["FLOPs"] > 0
    for name in ("finetune", "retrain", "neggrad+", "scrub"):
        assert math.isclose(
            rows[name]["FLOPs vs DKVB core"],
            rows[name]["FLOPs"] / rows["dkvb-histogram"]["FLOPs"],
        )
