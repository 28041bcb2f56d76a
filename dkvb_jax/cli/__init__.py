"""The ``dkvb`` command line (see :mod:`dkvb_jax.cli.main`)."""

from dkvb_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
