"""NegGrad+: descend on retain cross-entropy while ascending on forget cross-entropy."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from dkvb_jax.baselines.finetune import monitor_splits
from dkvb_jax.baselines.stopping import StoppingConfig
from dkvb_jax.baselines.trainer import (
    OptimizerConfig,
    Phase,
    cross_entropy,
    merge_params,
    train_loop,
)
from dkvb_jax.baselines.types import ApplyFn, Trajectory, UnlearningData, validate_unlearning_data
from dkvb_jax.evaluation.cost import CostRecord

__all__ = ["NegGradConfig", "neggrad"]


@dataclasses.dataclass(frozen=True)
class NegGradConfig:
    """NegGrad+ (loss = alpha * CE(retain) - (1 - alpha) * CE(forget)).

    Attributes:
      alpha: retain weight in (0, 1); published range about 0.95-0.9999.
      optimizer: optimizer config.
      batch_size: retain minibatch size (one step per retain batch).
      forget_batch_size: forget minibatch size; forget batches are cycled alongside.
      stopping: stopping rule on forget accuracy.
      progress: show a progress bar.
    """

    alpha: float = 0.99
    optimizer: OptimizerConfig = OptimizerConfig(
        name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4
    )
    batch_size: int = 128
    forget_batch_size: int = 128
    stopping: StoppingConfig = StoppingConfig(max_epochs=10)
    progress: bool = True

    def __post_init__(self):
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"NegGradConfig.alpha must be in (0, 1), got {self.alpha!r}.")
        for name in ("batch_size", "forget_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NegGradConfig.{name} must be an int >= 1, got {value!r}.")


def neggrad(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    data: UnlearningData,
    config: NegGradConfig = NegGradConfig(),
    *,
    key: jax.Array,
) -> tuple[dict[str, Any], CostRecord, Trajectory]:
    """Runs NegGrad+ on ``variables['params']``; other collections are kept.

    Returns:
      ``(new variables, cost at the stopping epoch, trajectory)``.
    """
    data = validate_unlearning_data(apply_fn, variables, data)
    alpha = config.alpha

    def loss_fn(params, context, batch):
        rest, _ = context
        (xr, yr, wr), (xf, yf, wf) = batch
        v = merge_params(rest, params)
        retain_ce = cross_entropy(apply_fn(v, xr), yr, wr)
        forget_ce = cross_entropy(apply_fn(v, xf), yf, wf)
        return alpha * retain_ce - (1.0 - alpha) * forget_ce, (retain_ce, forget_ce)

    phase = Phase(
        "neggrad",
        loss_fn,
        data.retain_x,
        data.retain_y,
        min(config.batch_size, data.retain_x.shape[0]),
        paired=(
            data.forget_x,
            data.forget_y,
            min(config.forget_batch_size, data.forget_x.shape[0]),
        ),
    )
    new_vars, cost, traj, _ = train_loop(
        "neggrad+",
        apply_fn,
        variables,
        [phase],
        key=key,
        optimizer=config.optimizer,
        stopping=config.stopping,
        monitor=monitor_splits(data),
        progress=config.progress,
    )
    return new_vars, cost.with_extra(alpha=alpha), traj
