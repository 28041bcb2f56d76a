"""Training a DKVB model and its data passes: key initialisation, value training, codes,
key-usage counting and evaluation. Each takes `mesh=None` (one device) or a device mesh."""

from dkvb_jax.training.codes import compute_codes
from dkvb_jax.training.evaluate import EvalResult, evaluate
from dkvb_jax.training.keys import KeyInitConfig, KeyInitReport, fit_keys, quantisation_error
from dkvb_jax.training.usage import key_usage, usage_from_codes
from dkvb_jax.training.values import (
    TrainHistory,
    ValueTrainConfig,
    smoothed_cross_entropy,
    train_values,
)

__all__ = [
    "EvalResult",
    "KeyInitConfig",
    "KeyInitReport",
    "TrainHistory",
    "ValueTrainConfig",
    "compute_codes",
    "evaluate",
    "fit_keys",
    "key_usage",
    "quantisation_error",
    "smoothed_cross_entropy",
    "train_values",
    "usage_from_codes",
]
