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
        {
            "name": "sgd_std_top2",
            "model": {**TINY, "top_k": 2},
            "preprocess": "standardize",
            "key_init": {"epochs": 1, "batch_size": 64},
            "key_rows": 100,
            "values": "train",
            "train": {"epochs": 1, "batch_size": 64},
        },
    ]
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


def test_suite_runs_each_once_and_writes_one_table(mq, tmp_path, monkeypatch):
    small = ["--synthetic", "--recipes", str(_recipes(tmp_path)), "--unlearn-eval-rows", "50"]
    suite = tmp_path / "suite.json"
    entries = [
        {"name": "a", "args": [*small, "--max-n-uva", "2", "--max-n-uve", "2"]},
        {"name": "b", "args": [*small, "--no-unlearning"]},
    ]
    suite.write_text(json.dumps(entries))
    out = tmp_path / "suite_out"
    argv = ["--suite", str(suite), "--out", str(out)]
    mq.main(argv)
    table = (out / "results.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| run |"))
    rows = [line for line in table if line.startswith(("| a (", "| b ("))]
    assert len(rows) == 2 and all(r.count("|") == header.count("|") for r in rows)
    assert "| search |" in rows[0] and "| - |" in rows[1]  # mask mode; b did no unlearning

    calls = []
    real_run = mq.run
    monkeypatch.setattr(mq, "run", lambda *a: calls.append(a) or real_run(*a))
    mq.main(argv)  # both saved with the same arguments: reused
    assert calls == []
    entries[1]["args"] = [*small, "--no-unlearning", "--seed", "1"]
    suite.write_text(json.dumps(entries))
    mq.main(argv)  # b's arguments changed: only b reruns
    assert len(calls) == 1 and calls[0][0].seed == 1


def test_suite_names_must_be_unique(mq, tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([{"name": "a", "args": []}, {"name": "a", "args": []}]))
    with pytest.raises(ValueError, match="unique"):
        mq.main(["--suite", str(suite), "--out", str(tmp_path / "o")])
