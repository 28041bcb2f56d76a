"""Smoke test of experiments/model_quality.py: the machinery on tiny synthetic data, no tuned numbers."""

import json

import pytest
from script_testutil import load_script


@pytest.fixture(scope="module")
def mq():
    return load_script("experiments/model_quality.py", "model_quality")


TINY = {"num_codebooks": 4, "num_keys": 8, "key_dim": 3}


def _recipes(tmp_path):
    recipes = [
        {"name": "sgd_std_top2", "model": {**TINY, "top_k": 2}, "preprocess": "standardize",
         "key_init": {"epochs": 1, "batch_size": 64}, "key_rows": 100, "values": "train",
         "train": {"epochs": 1, "batch_size": 64}},
    ]  # fmt: skip
    path = tmp_path / "recipes.json"
    path.write_text(json.dumps(recipes))
    return path


def test_main_writes_one_table(mq, tmp_path):
    out = tmp_path / "out"
    argv = ["--synthetic", "--out", str(out), "--recipes", str(_recipes(tmp_path))]
    result = mq.main(argv + ["--max-n-uva", "4", "--max-n-uve", "4", "--unlearn-eval-rows", "50"])
    saved = json.loads((out / "model_quality.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["sgd_std_top2"]
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for row in saved["rows"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["gap_points"] == pytest.approx(
            100 * (row["probe_accuracy"] - row["test_accuracy"])
        )
        for method in ("uva", "uve"):
            u = row["unlearning"][method]
            assert u["n"] in [g["n"] for g in u["grid"]] and u["n"] <= 4
            assert u["reached"] == (u["forget_max"] == 0.0)
    table = (out / "model_quality.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| recipe"))
    rows = [line for line in table if line.startswith("| sgd_std_top2 |")]
    assert len(rows) == 1 and rows[0].count("|") == header.count("|")


@pytest.mark.parametrize(
    "recipe, match",
    [
        ({"name": "a", "model": TINY, "preprocess": "zca"}, "preprocess"),
        ({"name": "a", "model": TINY, "values": "sgd"}, "values"),
        ({"name": "a", "model": TINY, "epochs": 3}, "unknown recipe fields"),
    ],
)
def test_bad_recipe_is_named(mq, recipe, match):
    with pytest.raises(ValueError, match=match):
        mq.Recipe.from_dict(recipe)


def test_only_unknown_name(mq, tmp_path):
    with pytest.raises(ValueError, match="--only"):
        mq.load_recipes(_recipes(tmp_path), ["nope"])


def test_help_runs(mq, capsys):
    with pytest.raises(SystemExit) as e:
        mq.parse_args(["--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out
