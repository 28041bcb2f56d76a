"""Progress bars that read well in a terminal, a notebook and a log file alike.

In a terminal or a notebook this is `tqdm.auto.tqdm`. When stderr is not a terminal (a log
file, CI, ``2> run.log``) every bar is written as one line: no cursor movement between nested
bars, and no intermediate refreshes, only the bar's start and its final state.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from tqdm import TqdmWarning

with warnings.catch_warnings():
    # In a notebook without ipywidgets, tqdm.auto warns and then falls back to the text bar;
    # that fallback is what a reader needs, the warning (on `import dkvb_jax`) is noise.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

_NOTEBOOK = tqdm.__module__.startswith("tqdm.notebook")


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, one line per bar when the output is not a terminal."""
    out = kwargs.get("file") or sys.stderr
    if not _NOTEBOOK and not (hasattr(out, "isatty") and out.isatty()):
        kwargs.update(position=0, mininterval=float("inf"), leave=True, dynamic_ncols=False)
    return tqdm(iterable, **kwargs)


def note(message: str) -> None:
    """A message to stderr that does not break a bar that is being drawn."""
    tqdm.write(message, file=sys.stderr)
