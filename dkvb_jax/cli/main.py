"""dkvb: the command line of dkvb_jax (embed, fit, unlearn, evaluate, compare, demo).

    dkvb demo                                   # fit, forget one class, compare; offline
    dkvb embed   --encoder mobilenet_v1 --dataset cifar10 --data-dir ../shared/data/cifar10
    dkvb fit     --dataset cifar10_sample --checkpoint ckpt/
    dkvb unlearn --checkpoint ckpt/ --classes 3 --method uva
    dkvb evaluate --checkpoint ckpt/
    dkvb compare --dataset cifar10 --data-dir ../shared/data/cifar10 --out results/

Every command prints a readable table, or JSON with --json. fit, compare and demo take
--set FIELD=VALUE ... to change any field of the experiment config (e.g. --set value_epochs=6
n_a_grid=[8,16,32]). Bad input ends with one line on stderr and exit status 2; anything else is
a bug and ends with one line asking for a report and exit status 1. --debug shows the traceback
of either.
"""

from __future__ import annotations

import linecache
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

from dkvb_jax.cli.common import EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR
from dkvb_jax.cli.parser import build_parser
from dkvb_jax.errors import InputError

_PACKAGE_DIR = os.path.realpath(pathlib.Path(__file__).parents[1])


def _raised_by_library(e: BaseException) -> bool:
    """True when a ``raise`` statement of dkvb_jax itself raised `e` (not numpy, jax, ...)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    if not os.path.realpath(filename).startswith(_PACKAGE_DIR + os.sep):
        return False
    # An int("x") or a failed unpacking in dkvb_jax code also ends there: only a raise counts.
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def is_input_error(e: BaseException) -> bool:
    """Whether the command line reports `e` as bad input (exit 2) rather than a bug (exit 1).

    Bad input: :class:`~dkvb_jax.errors.InputError` (CLIError included), CheckpointError,
    missing or unreadable files (OSError), training that diverged (FloatingPointError), and a
    ValueError or TypeError that the library raises itself, its convention for bad arguments.
    A TypeError, KeyError, IndexError, ... from inside numpy, jax or a broken code path is a bug.
    """
    from dkvb_jax.checkpoints import CheckpointError

    if isinstance(e, InputError | CheckpointError | OSError | FloatingPointError):
        return True
    return isinstance(e, ValueError | TypeError) and _raised_by_library(e)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dkvb`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_progress:
        os.environ["TQDM_DISABLE"] = "1"
    # orbax logs read-only-manager notices through absl on every restore; they are not news.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print(
            f"dkvb {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr
        )
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if is_input_error(e):
            print(f"dkvb {args.command}: error: {msg}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(
            f"dkvb {args.command}: internal error ({type(e).__name__}: {msg[:300]}); please "
            "report it. Rerun with --debug for the traceback.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
