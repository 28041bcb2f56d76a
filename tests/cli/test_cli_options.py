"""The command line's options as a user meets them: --version, help text, and --set overrides.

No test here fits a model: the configs are checked as built, before any data is read.
"""

import argparse
import json
import re

import pytest

import dkvb_jax
from dkvb_jax.cli import common, compare, config
from dkvb_jax.cli import main as cli


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"dkvb": parser, **{f"dkvb {name}": p for name, p in sub.choices.items()}}


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"dkvb_jax {dkvb_jax.__version__}\n"


@pytest.mark.parametrize("name", list(_parsers()))
def test_every_option_has_plain_help(name):
    parser = _parsers()[name]
    texts = [parser.description or "", parser.epilog or ""]
    for action in parser._actions:
        # A subcommand's one-line summary is the help of its entry in the subparsers action.
        entries = getattr(action, "_choices_actions", [])
        for a in [action, *entries]:
            label = "/".join(a.option_strings) or a.dest
            assert a.help and a.help.strip(), f"{name} {label} has no help"
            texts.append(a.help)
    texts.append(parser.format_help())
    for text in texts:
        assert "``" not in text, f"{name}: reST markup in {text!r}"
        assert not re.search(r"issue ", text, re.IGNORECASE), f"{name}: internal reference {text!r}"


def _config(*argv, base=None):
    return config.experiment_config(cli.build_parser().parse_args(list(argv)), base=base)


COMMANDS = {
    "fit": ["fit", "--checkpoint", "ckpt"],
    "compare": ["compare", "--out", "out"],
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_set_reaches_every_kind_of_field(command):
    cfg = _config(
        *command,
        "--set",
        "value_epochs=6",
        "n_a_grid=[8,16,32]",
        "holdout_fraction=0.1",
        "preprocess=standardize",
        "--set",
        "key_max_examples=100",
        "mia=false",
        "forget_classes=3",
        "value_learning_rate=1",
        "methods=uva",
    )
    assert cfg.value_epochs == 6 and cfg.n_a_grid == (8, 16, 32)
    assert cfg.holdout_fraction == 0.1 and cfg.preprocess == "standardize"
    assert cfg.key_max_examples == 100 and cfg.mia is False
    # A single value of a tuple field is a one-element tuple; an int for a float field a float.
    assert cfg.forget_classes == (3,) and cfg.methods == ("uva",)
    assert cfg.value_learning_rate == 1.0 and isinstance(cfg.value_learning_rate, float)


def test_set_wins_over_config_recipe_and_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {"experiment": {"recipe": "paper", "value_epochs": 3, "n_a_grid": [1, 2], "seed": 5}}
        )
    )
    argv = ["fit", "--checkpoint", "c", "--config", str(path), "--value-epochs", "4"]
    assert _config(*argv).value_epochs == 4
    cfg = _config(*argv, "--set", "value_epochs=7", "value_optimizer=adam", "key_max_examples=null")
    assert cfg.value_epochs == 7 and cfg.value_optimizer == "adam"
    # What --set leaves alone still comes from the file and its recipe.
    assert cfg.n_a_grid == (1, 2) and cfg.seed == 5 and cfg.preprocess == "standardize"
    # The last assignment of a field wins.
    assert _config(*argv, "--set", "seed=1", "--set", "seed=2").seed == 2


def test_demo_applies_set_to_its_own_settings(monkeypatch, capsys):
    seen = {}

    def run_compare(args, cfg, out):
        seen["cfg"] = cfg
        return 0

    monkeypatch.setattr(compare, "_run_compare", run_compare)
    assert cli.main(["demo", "--seed", "3", "--set", "value_epochs=2", "n_e_grid=[1,4]"]) == 0
    cfg = seen["cfg"]
    assert cfg.value_epochs == 2 and cfg.n_e_grid == (1, 4) and cfg.seed == 3
    assert cfg.num_codebooks == compare.DEMO["num_codebooks"] and cfg.baselines == ("finetune",)


BAD_SET = {
    "unknown field": (
        ["nope=1"],
        r"'nope' is not an ExperimentConfig field; valid fields: "
        r"num_codebooks, num_keys, .*value_epochs, .*seed\.",
    ),
    "no =": (["value_epochs"], r"'value_epochs' is not FIELD=VALUE"),
    "out of range": (["value_epochs=0"], r"ExperimentConfig.value_epochs must be a positive int"),
    "fraction": (
        ["holdout_fraction=1.5"],
        r"ExperimentConfig.holdout_fraction must be in \[0, 1\)",
    ),
    "not a list of ints": (["n_a_grid=abc"], r"ExperimentConfig.n_a_grid must be a list of ints"),
    "a float for an int": (["value_epochs=6.5"], r"ExperimentConfig.value_epochs must be an int"),
    "an int for a bool": (["mia=1"], r"ExperimentConfig.mia must be true or false, got '1'"),
    "unknown choice": (["preprocess=pca"], r"ExperimentConfig.preprocess must be one of none, "),
}
RUN = {
    "fit": ["fit", "--embeddings", "/nope.npz"],
    "compare": ["compare", "--embeddings", "/nope.npz"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("command", RUN.values(), ids=RUN.keys())
@pytest.mark.parametrize("assignments,needle", BAD_SET.values(), ids=BAD_SET.keys())
def test_bad_set_is_one_line_bad_input(tmp_path, capsys, command, assignments, needle):
    # Checked before the data is read: /nope.npz would otherwise be the error.
    out = tmp_path / "out"
    target = ["--out", str(out)] if command[0] != "fit" else ["--checkpoint", str(out)]
    code = cli.main([*command, *target, "--set", *assignments])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == common.EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith(f"dkvb {command[0]}: error: --set "), err
    assert re.search(needle, lines[0]), err
    assert not out.exists()
