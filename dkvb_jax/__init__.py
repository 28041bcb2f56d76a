"""dkvb_jax: low-compute machine unlearning with discrete key-value bottlenecks, in JAX/Flax.

A DKVB model keeps its knowledge in sparse, discrete key-value pairs; forgetting becomes an
edit of the variables pytree that masks the pairs the forget data uses.
"""

from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import DKVB, Lookup, nearest_keys
from dkvb_jax.training import (
    KeyInitConfig,
    KeyInitReport,
    TrainHistory,
    ValueTrainConfig,
    compute_codes,
    fit_keys,
    key_usage,
    quantisation_error,
    train_values,
    usage_from_codes,
)

__version__ = "0.1.0"

__all__ = [
    "DKVB",
    "DKVBConfig",
    "KeyInitConfig",
    "KeyInitReport",
    "Lookup",
    "TrainHistory",
    "ValueTrainConfig",
    "compute_codes",
    "fit_keys",
    "key_usage",
    "nearest_keys",
    "quantisation_error",
    "train_values",
    "usage_from_codes",
]
