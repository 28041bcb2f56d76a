"""The library's error type for input that cannot be right.

The validation helpers and the command line raise :class:`InputError` (a ``ValueError``) or
:class:`InputTypeError` (also a ``TypeError``), so callers that catch ``ValueError`` /
``TypeError`` keep working, and the ``dkvb`` command line can tell bad input (exit status 2)
from an internal bug (exit status 1).
"""

from __future__ import annotations


class InputError(ValueError):
    """An argument, file or setting that cannot be right; the message names it and says why."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (an :class:`InputError` that is also a ``TypeError``)."""
