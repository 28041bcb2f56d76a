"""Yardsticks for unlearning: accuracy on the splits, membership inference, cost, results table."""

from dkvb_jax.evaluation.cost import (
    CostRecord,
    Timer,
    compile_with_flops,
    dense_lookup_model,
    flops_of,
    forward_cost,
    step_flops,
)
from dkvb_jax.evaluation.metrics import (
    accuracy,
    deltas,
    evaluate_unlearning,
    per_class_accuracy,
    per_example_loss,
)
from dkvb_jax.evaluation.mia import MIAResult, membership_inference, mia_attack
from dkvb_jax.evaluation.table import ResultRow, ResultsTable, dkvb_row_name, method_order

__all__ = [
    "CostRecord",
    "MIAResult",
    "ResultRow",
    "ResultsTable",
    "Timer",
    "accuracy",
    "compile_with_flops",
    "dense_lookup_model",
    "deltas",
    "dkvb_row_name",
    "evaluate_unlearning",
    "flops_of",
    "forward_cost",
    "membership_inference",
    "method_order",
    "mia_attack",
    "per_class_accuracy",
    "per_example_loss",
    "step_flops",
]
