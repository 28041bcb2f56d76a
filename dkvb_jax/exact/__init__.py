"""Exact unlearning: closed-form values from per-pair label counts.

With frozen keys, forgetting any set of examples (or classes) subtracts their integer counts and
re-derives the values, which is bit-identical to refitting without them.
"""

from dkvb_jax.exact.api import (
    add_examples,
    fit_exact,
    remove_classes,
    remove_examples,
    values_without,
)
from dkvb_jax.exact.estimators import EstimatorConfig, codebook_information, derive_values
from dkvb_jax.exact.statistics import LabelStats, StatsConfig, counts_from_codes, subtract_rows

__all__ = [
    "EstimatorConfig",
    "LabelStats",
    "StatsConfig",
    "add_examples",
    "codebook_information",
    "counts_from_codes",
    "derive_values",
    "fit_exact",
    "remove_classes",
    "remove_examples",
    "subtract_rows",
    "values_without",
]
