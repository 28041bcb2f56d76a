"""experiments/class_unlearning.py: the mean / spread summary over classes x seeds."""

import pytest
from script_testutil import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("experiments/class_unlearning.py", "every_class")


def _run(orig_r, uva_r, uva_f, uva_flops):
    rec = dict(mia=0.5, wall_s=None, gflops=None, cost_vs_dkvb=None)
    return {"summary": [
        rec | {"method": "original", "retain_test_acc": orig_r, "forget_test_acc": 0.9},
        rec | {"method": "DKVB-UvA", "retain_test_acc": uva_r, "forget_test_acc": uva_f,
               "gflops": uva_flops, "wall_s": 0.1, "cost_vs_dkvb": 1.0},
    ]}  # fmt: skip


def test_summary_mean_std_and_deltas(script):
    runs = [_run(0.8, 0.79, 0.0, 1.0), _run(0.9, 0.87, 0.2, 3.0)]
    rows = {r["method"]: r for r in script.summarise(runs)}
    uva = rows["DKVB-UvA"]
    assert uva["runs"] == 2
    assert uva["forget_test_acc_mean"] == pytest.approx(0.1)
    assert uva["forget_test_acc_std"] == pytest.approx(0.1)
    assert uva["delta_retain_test_acc_mean"] == pytest.approx(-0.02)
    assert uva["gflops_mean"] == pytest.approx(2.0)
    md = script.to_markdown(script.summarise(runs)).splitlines()
    assert len(md) == 4 and "10.00 ± 10.00" in md[3]
