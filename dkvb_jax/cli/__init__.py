"""The ``dkvb`` command line: see :mod:`dkvb_jax.cli.main` (``main``, ``build_parser``).

The submodule is not re-exported here, so ``dkvb_jax.cli.main`` stays the module (scripts reuse
its argument helpers) rather than being shadowed by its ``main`` function.
"""
