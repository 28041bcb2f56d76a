"""The argument parser of every dkvb command."""

from __future__ import annotations

import argparse

from dkvb_jax import __version__
from dkvb_jax.cli.common import RECIPE_CHOICES
from dkvb_jax.cli.compare import cmd_compare, cmd_demo
from dkvb_jax.cli.fit import cmd_embed, cmd_evaluate, cmd_fit
from dkvb_jax.cli.unlearn import cmd_unlearn
from dkvb_jax.data.registry import DATASETS
from dkvb_jax.embedding import DEFAULT_CACHE_DIR
from dkvb_jax.model.preprocess import KINDS
from dkvb_jax.unlearning.registry import DEFAULT_METHODS, METHODS, default_method


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help="embedding cache (default: $DKVB_CACHE_DIR or ~/.cache/dkvb_jax)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def add_data_args(p: argparse.ArgumentParser, embeddings: bool = True) -> None:
    p.add_argument(
        "--encoder",
        default=None,
        help="registered encoder, e.g. mobilenet_v1 (default), cifar_resnet20",
    )
    p.add_argument(
        "--dataset", default=None, help=f"dataset: {', '.join(DATASETS)} (default cifar10_sample)"
    )
    p.add_argument(
        "--data-dir", default=None, help="where the dataset lives (folder, zip, tfds dir)"
    )
    if embeddings:
        p.add_argument(
            "--embeddings",
            default=None,
            help="NPZ with x_train, y_train, x_test, y_test instead of encoder+dataset",
        )


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=None,
        metavar="FIELD=VALUE",
        help="set any experiment-config field, after --config and the other flags; "
        "VALUE is JSON when it parses, else a string (e.g. --set value_epochs=6 "
        "n_a_grid=[8,16,32] preprocess=lda)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=None, help="experiment config JSON (see experiments/configs)"
    )
    p.add_argument("--codebooks", type=int, default=None, help="codebooks C (default 128)")
    p.add_argument("--keys", type=int, default=None, help="keys per codebook K (default 512)")
    p.add_argument("--key-dim", type=int, default=None, help="key dimension (default 14)")
    p.add_argument(
        "--recipe",
        choices=RECIPE_CHOICES,
        default=None,
        help="training recipe: certified (LDA and keys on a held-out 20%% of the "
        "training rows, values from label counts of the rest; every removal certified "
        "exact), lda_adam (LDA and keys on every row, Adam-trained values) or paper "
        "(standardised inputs, SGD); default (the same as certified) unless a "
        "--config file names one",
    )
    p.add_argument(
        "--preprocess",
        choices=KINDS,
        default=None,
        help="input map folded into the projection (default: the recipe's)",
    )
    p.add_argument("--top-k", type=int, default=None, help="keys retrieved per codebook (1)")
    p.add_argument("--key-epochs", type=int, default=None, help="EMA k-means epochs (10)")
    p.add_argument(
        "--value-epochs",
        type=int,
        default=None,
        help="value-training epochs (5; trained values only)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="value learning rate (0.5; trained values only)"
    )
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (0)")
    p.add_argument(
        "--key-dataset",
        default=None,
        help="fit keys on this dataset's train split, unlabelled (e.g. cifar100)",
    )
    p.add_argument("--key-data-dir", default=None, help="data dir of --key-dataset")
    add_override_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``dkvb`` command line: one subcommand per step (embed, fit, unlearn, ...)."""
    parser = argparse.ArgumentParser(
        prog="dkvb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dkvb_jax {__version__}",
        help="print the version of dkvb_jax and exit",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="command",
        required=True,
        help="one of these; dkvb COMMAND --help for its options",
    )
    _add_embed(sub)
    _add_fit(sub)
    _add_unlearn(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_demo(sub)
    return parser


def _add_embed(sub) -> None:
    """dkvb embed: encode a dataset into the embedding cache."""
    p = sub.add_parser("embed", help="encode a dataset into the embedding cache")
    add_data_args(p, embeddings=False)
    p.add_argument(
        "--splits",
        nargs="+",
        default=["train", "test"],
        choices=["train", "test"],
        help="splits to encode (default: train test)",
    )
    p.add_argument("--rebuild", action="store_true", help="encode again even if cached")
    add_common_args(p)
    p.set_defaults(fn=cmd_embed)


def _add_fit(sub) -> None:
    """dkvb fit: keys and values on cached embeddings, into a checkpoint folder."""
    p = sub.add_parser("fit", help="fit keys (unlabelled) and values; save a checkpoint")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (resumes if present)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the model (default: 1 + the largest label, which the training labels "
        "must then cover without gaps)",
    )
    add_common_args(p)
    p.set_defaults(fn=cmd_fit)


def _add_unlearn(sub) -> None:
    """dkvb unlearn: forget classes or examples, saved as a new step."""
    p = sub.add_parser("unlearn", help="forget classes or examples; save a new checkpoint")
    add_data_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder written by 'dkvb fit'")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="class ids to forget")
    p.add_argument("--examples", default=None, help="training example ids: 1,2,3 or @file")
    p.add_argument(
        "--method",
        default=None,
        choices=tuple(METHODS),
        help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
        + f" (default: {default_method(label_stats=True)} for models with closed-form values, "
        f"else {default_method(label_stats=False)})",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="N_a or N_e; default: the smallest N giving forget train accuracy 0",
    )
    p.add_argument(
        "--out", default=None, help="new checkpoint folder (default: a new step of --checkpoint)"
    )
    p.add_argument(
        "--purge-earlier",
        action="store_true",
        help="after saving, delete the earlier steps of the folder and the fit's keys/ and "
        "values/ (they still hold the forgotten data); recorded in the new step",
    )
    add_common_args(p)
    p.set_defaults(fn=cmd_unlearn)


def _add_evaluate(sub) -> None:
    """dkvb evaluate: accuracy, per-class accuracy and MIA of a checkpoint."""
    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and MIA of a checkpoint")
    add_data_args(p)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder written by 'dkvb fit' or 'dkvb unlearn'",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--no-mia", action="store_true", help="skip the membership-inference attack")
    add_common_args(p)
    p.set_defaults(fn=cmd_evaluate)


def _add_compare(sub) -> None:
    """dkvb compare: the class-unlearning experiment against the baselines."""
    p = sub.add_parser("compare", help="the paper's class-unlearning experiment, end to end")
    add_data_args(p)
    add_model_args(p)
    p.add_argument(
        "--forget-classes",
        type=int,
        nargs="+",
        default=None,
        help="classes to forget (default: the best-learned class)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        help="from retrain finetune neggrad+ scrub (default: all)",
    )
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help=f"DKVB methods from {' '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--head-epochs", type=int, default=None, help="linear head / retrain epochs")
    p.add_argument("--baseline-max-epochs", type=int, default=None, help="baseline epoch cap")
    p.add_argument("--no-mia", action="store_true", help="skip the membership-inference attack")
    p.add_argument("--out", required=True, help="output folder (table, plots, checkpoint)")
    add_common_args(p)
    p.set_defaults(fn=cmd_compare)


def _add_demo(sub) -> None:
    """dkvb demo: the offline end-to-end run on the shipped sample."""
    p = sub.add_parser("demo", help="fit, forget the best-learned class, compare (offline)")
    p.add_argument("--encoder", default=None, help="encoder (default mobilenet_v1, shipped)")
    p.add_argument("--dataset", default=None, help="dataset (default cifar10_sample, shipped)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the dataset lives (not needed for the shipped cifar10_sample)",
    )
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--out", default="dkvb_demo", help="output folder (default ./dkvb_demo)")
    add_override_args(p)
    add_common_args(p)
    p.set_defaults(fn=cmd_demo)
