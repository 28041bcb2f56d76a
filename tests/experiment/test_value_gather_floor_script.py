"""The dense-path floor benchmark at a tiny size: its paths agree, its arithmetic holds."""

import json

import pytest
from script_testutil import load_script


def test_floor_benchmark_runs_and_scales_by_the_json_pair_count(tmp_path):
    script = load_script("experiments/benchmarks/value_gather_floor.py", "value_gather_floor")
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"uva": {"undecided_pairs_mean": 2_000_000}}))
    out = tmp_path / "floor.json"
    tiny = "--codebooks 4 --keys 64 --classes 10 --pairs 8192 --rows 256 --repeats 1"
    result = script.main([*tiny.split(), "--json", str(run), "--out", str(out)])
    assert json.loads(out.read_text())["pairs"] == 8192
    for name in ("delta", "gathers", "coarse_uint8"):
        entry = result[name]
        assert entry["ns_per_pair"] > 0
        assert entry["s_per_class"] == pytest.approx(entry["ns_per_pair"] * 2e6 / 1e9)
        assert entry["min_for_1000_classes"] == pytest.approx(entry["s_per_class"] * 1000 / 60)
