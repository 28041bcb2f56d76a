"""Every config file shipped in experiments/configs parses: a typo fails here, not an hour in."""

import json
import pathlib

import pytest
from script_testutil import load_script

from dkvb_jax.experiment import ExperimentConfig

CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "experiments" / "configs").glob("*.json"))


def _kind(path):
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return "experiment"
    return "suite" if all("args" in e for e in data) else "recipes"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    data = json.loads(path.read_text())
    kind = _kind(path)
    if kind == "experiment":
        cfg = ExperimentConfig.from_dict(data["experiment"])
        assert {"encoder", "dataset"} <= set(data)
        # The paper-reproduction configs keep the paper's recipe; the others use LDA inputs.
        paper = data["experiment"].get("recipe") == "paper"
        assert cfg.preprocess == ("standardize" if paper else "lda")
        return
    mq = load_script("experiments/model_quality.py", "model_quality")
    if kind == "recipes":
        assert [mq.Recipe.from_dict(r).name for r in data]
    else:
        for entry in data:
            args = mq.parse_args(entry["args"])
            assert pathlib.Path(args.recipes).exists(), args.recipes
            mq.load_recipes(pathlib.Path(args.recipes), args.only)


def test_configs_found():
    assert len(CONFIGS) >= 10
