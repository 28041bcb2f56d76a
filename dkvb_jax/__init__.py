"""dkvb_jax: low-compute machine unlearning with discrete key-value bottlenecks, in JAX/Flax.

A DKVB model keeps its knowledge in sparse, discrete key-value pairs; forgetting becomes an
edit of the variables pytree that masks the pairs the forget data uses.

Subpackages: `model`, `training`, `unlearning` (masking), `exact` (closed-form values, exact
removal), `provenance` (what each part was fitted on, and certificates), `baselines`,
`evaluation`, `encoders`, `data`, `parallel`, `checkpoints`, `cli`.
"""

from dkvb_jax import (
    baselines,
    checkpoints,
    data,
    encoders,
    evaluation,
    exact,
    model,
    parallel,
    provenance,
    training,
    unlearning,
)
from dkvb_jax.checkpoints import restore_model, save_model
from dkvb_jax.config import DKVBConfig
from dkvb_jax.encoders import Encoder, get_encoder, list_encoders, register_encoder
from dkvb_jax.model import DKVB, Lookup, nearest_keys
from dkvb_jax.provenance import Certificate, Provenance, Rows, certify
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
from dkvb_jax.unlearning import (
    AuditRecord,
    RetainAware,
    forget_classes,
    forget_examples,
    sweep_uva,
    sweep_uve,
    unlearn_via_activations,
    unlearn_via_examples,
)

__version__ = "0.1.0"

__all__ = [
    "DKVB",
    "AuditRecord",
    "Certificate",
    "DKVBConfig",
    "Encoder",
    "KeyInitConfig",
    "KeyInitReport",
    "Lookup",
    "RetainAware",
    "TrainHistory",
    "ValueTrainConfig",
    "baselines",
    "checkpoints",
    "compute_codes",
    "data",
    "encoders",
    "evaluation",
    "exact",
    "fit_keys",
    "forget_classes",
    "forget_examples",
    "get_encoder",
    "key_usage",
    "list_encoders",
    "model",
    "nearest_keys",
    "parallel",
    "provenance",
    "Provenance",
    "Rows",
    "certify",
    "quantisation_error",
    "register_encoder",
    "restore_model",
    "save_model",
    "sweep_uva",
    "sweep_uve",
    "train_values",
    "training",
    "unlearn_via_activations",
    "unlearn_via_examples",
    "unlearning",
    "usage_from_codes",
]
