"""Unlearning as a pure edit of the variables pytree: select pairs, mask them, audit the call.

Array-level, jittable core: :mod:`selection` (which pairs), :mod:`masking` (apply a selection),
:mod:`fast_eval` (evaluate many unlearned variants from codes computed once). Methods as
specs (what each needs and the pure edit it makes): :mod:`spec`, registered in :mod:`registry`;
``unlearn(name, ...)`` runs any of them. Validated
wrappers returning ``(new_variables, AuditRecord)``: :mod:`methods`. Sweeps over N: :mod:`sweep`.
"""

from dkvb_jax.unlearning.audit import AuditRecord, variables_hash
from dkvb_jax.unlearning.fast_eval import (
    codes_under_mask,
    every_class_metrics,
    params_variant_outputs,
    ranked_codes,
    unlearn_every_class,
    uva_metrics,
    uve_metrics,
    variant_outputs,
    variant_predictions,
)
from dkvb_jax.unlearning.masking import apply_selection, clear_masks, hard_delete, masked_pairs
from dkvb_jax.unlearning.methods import (
    RetainAware,
    accuracy_effect,
    forget_classes,
    forget_examples,
    unlearn_via_activations,
    unlearn_via_examples,
)
from dkvb_jax.unlearning.registry import METHODS, get_method, masking_methods, register_method
from dkvb_jax.unlearning.selection import (
    codes_selection,
    key_ranks,
    mask_top_n,
    mask_top_n_per_class,
    psum_usage,
    retain_aware,
)
from dkvb_jax.unlearning.spec import (
    ForgetData,
    SizeParam,
    UnlearningMethod,
    masking_edit,
    stack_sets,
)
from dkvb_jax.unlearning.sweep import SweepResult, sweep, sweep_uva, sweep_uve
from dkvb_jax.unlearning.unlearn import unlearn

__all__ = [
    "AuditRecord",
    "ForgetData",
    "METHODS",
    "SizeParam",
    "UnlearningMethod",
    "get_method",
    "masking_edit",
    "masking_methods",
    "register_method",
    "stack_sets",
    "sweep",
    "unlearn",
    "RetainAware",
    "SweepResult",
    "accuracy_effect",
    "apply_selection",
    "clear_masks",
    "codes_selection",
    "codes_under_mask",
    "every_class_metrics",
    "forget_classes",
    "forget_examples",
    "hard_delete",
    "key_ranks",
    "mask_top_n",
    "mask_top_n_per_class",
    "masked_pairs",
    "params_variant_outputs",
    "psum_usage",
    "ranked_codes",
    "retain_aware",
    "sweep_uva",
    "sweep_uve",
    "unlearn_every_class",
    "unlearn_via_activations",
    "unlearn_via_examples",
    "uva_metrics",
    "uve_metrics",
    "variables_hash",
    "variant_outputs",
    "variant_predictions",
]
