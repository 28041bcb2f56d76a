"""The every-class evaluation studies run on an imagenet_scale.py cache and check themselves."""

import json
import sys

import pytest
from script_testutil import ROOT, load_script
from test_imagenet_scale_script import TINY

SHAPE = ["--num-classes", "10", "--rows-per-class", "24", "--val-per-class", "6"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
    tmp = tmp_path_factory.mktemp("tiny")
    scale = load_script("experiments/benchmarks/imagenet_scale.py", "imagenet_scale_script")
    scale.main([*TINY, "--cache", str(tmp / "cache"), "--out", str(tmp / "run.json")])
    return tmp / "cache"


def test_group_bounds_on_a_tiny_cache_are_sound_and_add_up(tiny_cache, tmp_path):
    study = load_script("experiments/benchmarks/class_group_bounds.py", "class_group_bounds")
    out = tmp_path / "groups.json"
    # The script raises if a group it drops holds a class that reaches the label's logit.
    study.main(
        ["--cache", str(tiny_cache), *SHAPE, "--n-keys", "3", "--classes", "0,7"]
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


def test_dense_levels_on_a_tiny_cache_are_exact_and_agree_with_the_evaluation(tiny_cache, tmp_path):
    """The script raises if its depth counts disagree with the evaluation's pair counts or its
    split float32 product with the int64 sum; here: the counts shrink with depth and add up."""
    study = load_script("experiments/benchmarks/dense_levels.py", "dense_levels")
    out = tmp_path / "levels.json"
    got = study.main(
        ["--cache", str(tiny_cache), *SHAPE, "--n-keys", "3", "--classes", "0,7"]
        + ["--rows", "8", "--check-rows", "8", "--repeats", "1", "--gather-ns", "700"]
        + ["--out", str(out)]
    )
    saved = json.loads(out.read_text())["dense_level_one"]
    assert {k: v["hybrid_projection_s"] for k, v in saved.items()} == {
        k: v["hybrid_projection_s"] for k, v in got["dense_level_one"].items()
    }
    for depths in got["pairs_to_depth"]:
        assert depths[0] > 0 and all(a >= b for a, b in zip(depths, depths[1:], strict=False))
    assert 0 <= got["deeper_share"] < 1 and got["checked_rows"] == 8
    assert set(got["dense_level_one"]) == {"f32", "bf16"}


def test_every_class_at_once_on_a_tiny_cache_agrees_with_the_run_and_the_per_class_path(
    tiny_cache, tmp_path
):
    """The script raises if its counts differ from the per-class evaluation's on the checked
    classes or from the imagenet_scale run's per-class accuracies."""
    study = load_script("experiments/benchmarks/every_class_at_once.py", "every_class_at_once")
    run = json.loads((tiny_cache.parent / "run.json").read_text())
    out = tmp_path / "at_once.json"
    got = study.main(
        ["--cache", str(tiny_cache), *SHAPE, "--n-keys", str(run["uva"]["n_keys"])]
        + ["--rows", "8", "--check-classes", "3", "--no-plot", "--out", str(out)]
        + ["--compare", str(tiny_cache.parent / "run.json")]
    )
    assert got["compared"] == dict(path=str(tiny_cache.parent / "run.json"), classes=10, equal=True)
    assert got["classes_evaluated"] == 10 and len(got["checked_by_per_class"]) == 3
    assert got["per_class"]["forget"] == json.loads(out.read_text())["per_class"]["forget"]
    assert 0 < got["sizes"]["undecided_share"] < 1
