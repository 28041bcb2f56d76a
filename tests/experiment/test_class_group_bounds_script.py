"""The class-group bound study runs on an imagenet_scale.py cache and checks its own bounds."""

import json

from script_testutil import ROOT, load_script
from test_imagenet_scale_script import TINY


def test_group_bounds_on_a_tiny_cache_are_sound_and_add_up(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
    scale = load_script("experiments/benchmarks/imagenet_scale.py", "imagenet_scale_script")
    scale.main([*TINY, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run.json")])
    study = load_script("experiments/benchmarks/class_group_bounds.py", "class_group_bounds")
    out = tmp_path / "groups.json"
    shape = ["--num-classes", "10", "--rows-per-class", "24", "--val-per-class", "6"]
    # The script raises if a group it drops holds a class that reaches the label's logit.
    study.main(
        ["--cache", str(tmp_path / "cache"), *shape, "--n-keys", "3", "--classes", "0,7"]
        + ["--widths", "2,5", "--slots", "1", "--out", str(out)]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["forgotten_class"], r["width"]) for r in rows] == [(0, 2), (0, 5), (7, 2), (7, 5)]
    assert any(r["undecided_rows"] > 0 for r in rows)
    for r in rows:
        if r["undecided_rows"]:
            parts = r["decided_by_groups"] + r["rows_within_slots"] + r["rows_beyond_slots"]
            assert abs(parts - 1) < 1e-9 and 0 <= r["pairs_beyond_slots"] <= 1
            assert r["groups_mean"] <= 10 // r["width"]
