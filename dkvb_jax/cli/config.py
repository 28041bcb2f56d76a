"""The experiment config of a command: --config file, flags and --set overrides."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from dkvb_jax.cli.common import CLIError


def read_config(args) -> dict:
    if not getattr(args, "config", None):
        return {}
    p = pathlib.Path(args.config)
    if not p.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"--config {args.config} is not valid JSON ({e}).") from e


def apply_config_defaults(args) -> None:
    """Fills --encoder/--dataset/--data-dir/--key-dataset from the --config file when unset."""
    loaded = read_config(args)
    if getattr(args, "embeddings", None):
        return
    for name in ("encoder", "dataset", "data_dir", "key_dataset"):
        if getattr(args, name, None) is None and loaded.get(name) is not None:
            setattr(args, name, loaded[name])


# ExperimentConfig field (or "recipe") of each flag that sets one; flags a command lacks are unset.

_CONFIG_FLAGS = {
    "codebooks": "num_codebooks",
    "keys": "num_keys",
    "key_dim": "key_dim",
    "top_k": "top_k",
    "key_epochs": "key_epochs",
    "value_epochs": "value_epochs",
    "lr": "value_learning_rate",
    "seed": "seed",
    "recipe": "recipe",
    "preprocess": "preprocess",
    "forget_classes": "forget_classes",
    "baselines": "baselines",
    "methods": "methods",
    "head_epochs": "head_epochs",
    "baseline_max_epochs": "baseline_max_epochs",
}


def experiment_config(args, base: dict | None = None) -> Any:
    """The run's ExperimentConfig: `base` (default: the ``--config`` JSON), then the flags,
    then ``--set FIELD=VALUE`` overrides, each later one winning."""
    from dkvb_jax.experiment import ExperimentConfig
    from dkvb_jax.experiment.config import parse_overrides

    if base is None:
        loaded = read_config(args)
        base = dict(loaded.get("experiment", loaded)) if loaded else {}
    settings = dict(base)
    for flag, field in _CONFIG_FLAGS.items():
        if getattr(args, flag, None) is not None:
            settings[field] = getattr(args, flag)
    if getattr(args, "no_mia", False):
        settings["mia"] = False
    cfg = ExperimentConfig.from_dict(settings)
    assignments = getattr(args, "overrides", None)
    if not assignments:
        return cfg
    # Built apart from the rest, so that an error here is the --set's and says so.
    try:
        return cfg.replace(**parse_overrides(assignments))
    except (TypeError, ValueError) as e:
        raise CLIError(f"--set {' '.join(assignments)}: {e}") from e
