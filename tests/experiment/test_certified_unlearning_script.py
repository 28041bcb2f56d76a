"""Smoke test of experiments/certified_unlearning.py on tiny synthetic data (no timings asserted)."""

import json

import pytest
from script_testutil import load_script

TINY = [
    "--set",
    "num_codebooks=4",
    "num_keys=16",
    "key_dim=4",
    "key_epochs=1",
    "--sequential",
    "4",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    script = load_script("experiments/certified_unlearning.py", "certified_unlearning")
    out = tmp_path_factory.mktemp("certified")
    return out, script.main(["--synthetic", *TINY, "--out", str(out)])


def test_json_has_the_checked_keys_as_fractions(run):
    out, results = run
    saved = json.loads((out / "certified_synthetic.json").read_text())
    assert saved == json.loads(json.dumps(results["synthetic"]))
    assert saved["encoder"] == "synthetic_features" and saved["certified"] is True
    for key in ("test_accuracy", "probe_accuracy"):
        assert 0.0 < saved[key] <= 1.0


def test_every_request_is_certified_and_equals_its_oracle(run):
    saved = json.loads((run[0] / "certified_synthetic.json").read_text())
    assert len(saved["classes"]) == 11 and saved["classes"][-1]["classes"] == [3, 5, 7]
    for r in saved["classes"] + saved["fractions"]:
        assert r["certificate"]["certified"] and r["bit_identical_to_oracle"]
        assert r["mia"]["after"] == r["mia"]["oracle"] and r["mia"]["after"]["n_per_side"] > 0
    assert all(c["forget_test_acc"]["after"] == 0.0 for c in saved["classes"])
    assert [f["fraction"] for f in saved["fractions"]] == [0.01, 0.1]
    assert all(not f["masking"]["certificate"]["certified"] for f in saved["fractions"])
    assert saved["sequential"]["bit_identical_to_union"] and saved["sequential"]["requests"] == 4
    assert saved["full_oracle"]["all_bit_identical"]
    old = saved["old_way"]["certificate"]
    assert not old["certified"] and "preprocess" in old["parts_that_saw"]


def test_markdown_table(run):
    md = (run[0] / "results.md").read_text()
    assert md.startswith("| encoder") and "synthetic_features" in md
    assert "random rows of D forgotten" in md and "Sequential: 4 requests" in md
