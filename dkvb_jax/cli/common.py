"""Shared pieces of the command line: its error type, exit statuses and output helpers."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from dkvb_jax.errors import InputError

# ExperimentConfig's recipes (dkvb_jax.experiment.RECIPES), named here so that building the
# parser needs no experiment module; a test keeps the two equal.
RECIPE_CHOICES = ("certified", "default", "lda_adam", "paper")


EXIT_BAD_INPUT = 2

EXIT_INTERNAL_ERROR = 1


class CLIError(InputError):
    """A user error the command line reports in one line."""


def emit(args, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".4g")


def percent(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def machine_info() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def record_field(record, name):
    """A field of an audit record, whether stored as a dict or an AuditRecord."""
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)
