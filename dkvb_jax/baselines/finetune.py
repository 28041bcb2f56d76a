"""Fine-tune baseline: keep training the original model on the retain split only."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from dkvb_jax.baselines.stopping import StoppingConfig
from dkvb_jax.baselines.trainer import OptimizerConfig, ce_phase, train_loop
from dkvb_jax.baselines.types import ApplyFn, Trajectory, UnlearningData, validate_unlearning_data
from dkvb_jax.evaluation.cost import CostRecord

__all__ = ["FineTuneConfig", "finetune", "monitor_splits"]


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning on retain data (SCRUB repo setting: SGD lr 0.01, 10 epochs).

    Attributes:
      optimizer: optimizer config.
      batch_size: retain minibatch size.
      stopping: stopping rule on forget accuracy (cap 10 epochs).
      progress: show a progress bar.
    """

    optimizer: OptimizerConfig = OptimizerConfig(
        name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4
    )
    batch_size: int = 128
    stopping: StoppingConfig = StoppingConfig(max_epochs=10)
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(
                f"FineTuneConfig.batch_size must be an int >= 1, got {self.batch_size!r}."
            )


def monitor_splits(data: UnlearningData) -> dict[str, tuple[jax.Array, jax.Array] | None]:
    """The splits a forgetting baseline records per epoch (forget accuracy drives stopping)."""

    def pair(x, y):
        return None if x is None else (x, y)

    return {
        "forget": (data.forget_x, data.forget_y),
        "retain": (data.retain_x, data.retain_y),
        "val_forget": pair(data.val_forget_x, data.val_forget_y),
        "val_retain": pair(data.val_retain_x, data.val_retain_y),
    }


def finetune(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    data: UnlearningData,
    config: FineTuneConfig = FineTuneConfig(),
    *,
    key: jax.Array,
) -> tuple[dict[str, Any], CostRecord, Trajectory]:
    """Continues training ``variables['params']`` with cross-entropy on the retain split.

    The forget split is used only to measure forget accuracy for the stopping rule.

    Returns:
      ``(new variables, cost at the stopping epoch, trajectory)``.
    """
    data = validate_unlearning_data(apply_fn, variables, data)
    phase = ce_phase("retain", apply_fn, data.retain_x, data.retain_y, config.batch_size)
    new_vars, cost, traj, _ = train_loop(
        "finetune",
        apply_fn,
        variables,
        [phase],
        key=key,
        optimizer=config.optimizer,
        stopping=config.stopping,
        monitor=monitor_splits(data),
        progress=config.progress,
    )
    return new_vars, cost, traj
