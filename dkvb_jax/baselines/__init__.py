"""Optimisation-based unlearning baselines on frozen embeddings (retrain, fine-tune, NegGrad+, SCRUB).

Every baseline is a pure function
``(apply_fn, variables, data, config, *, key) -> (new_variables, CostRecord, Trajectory)`` that
trains only ``variables['params']`` with optax and returns every other collection unchanged, so it
runs on a classifier head as well as on a DKVB model's values.
"""

from dkvb_jax.baselines.finetune import FineTuneConfig, finetune
from dkvb_jax.baselines.heads import LinearHead, params_initializer
from dkvb_jax.baselines.neggrad import NegGradConfig, neggrad
from dkvb_jax.baselines.retrain import RetrainConfig, retrain
from dkvb_jax.baselines.scrub import SCRUBConfig, scrub
from dkvb_jax.baselines.stopping import StoppingConfig, stop_reason
from dkvb_jax.baselines.trainer import OptimizerConfig, TrainConfig, fit_classifier
from dkvb_jax.baselines.types import (
    NonFiniteLossError,
    Trajectory,
    UnlearningData,
    class_unlearning_data,
)

BASELINES = {"retrain": retrain, "finetune": finetune, "neggrad+": neggrad, "scrub": scrub}
"""Name -> baseline function, all with the signature above."""

__all__ = [
    "BASELINES",
    "FineTuneConfig",
    "LinearHead",
    "NegGradConfig",
    "NonFiniteLossError",
    "OptimizerConfig",
    "RetrainConfig",
    "SCRUBConfig",
    "StoppingConfig",
    "TrainConfig",
    "Trajectory",
    "UnlearningData",
    "class_unlearning_data",
    "finetune",
    "fit_classifier",
    "neggrad",
    "params_initializer",
    "retrain",
    "scrub",
    "stop_reason",
]
