"""SCRUB (Kurmanji et al., NeurIPS 2023): a student pushed away from its teacher on forget data.

The teacher is the original model, frozen; the student starts as a copy. Each epoch runs, during
the first ``max_steps_epochs`` epochs, a *max-step* pass over forget batches (maximise
KL(teacher || student) at temperature T) followed by a *min-step* pass over retain batches
(gamma * CE + alpha * KL). One Adam state is shared by both passes and the learning rate decays
x0.1 after each epoch in ``lr_decay_epochs``, as in the public code.

SCRUB+R (``rewind=True``) keeps the params after every epoch and, at the end, rewinds to the epoch
whose forget-set error is closest to the final model's error on held-out forget-distribution data
(``data.val_forget_*``, required then), so the forget set does not look *more* forgotten than
unseen data (a membership signal). The cost record still covers the whole run, since the run had
to finish before it could rewind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dkvb_jax.baselines.finetune import monitor_splits
from dkvb_jax.baselines.stopping import StoppingConfig
from dkvb_jax.baselines.trainer import (
    OptimizerConfig,
    Phase,
    cross_entropy,
    distill_kl,
    merge_params,
    train_loop,
)
from dkvb_jax.baselines.types import ApplyFn, Trajectory, UnlearningData, validate_unlearning_data
from dkvb_jax.evaluation.cost import CostRecord

__all__ = ["SCRUBConfig", "scrub"]


@dataclasses.dataclass(frozen=True)
class SCRUBConfig:
    """SCRUB, published small-scale setting.

    Attributes:
      optimizer: Adam lr 5e-4, weight decay 5e-4, decay x0.1 after epochs 3, 5, 9.
      temperature: distillation temperature T.
      gamma: weight of retain cross-entropy in the min-step.
      alpha: weight of retain KL in the min-step.
      max_steps_epochs: number of leading epochs that include a max-step pass ("msteps").
      batch_size: retain minibatch size.
      forget_batch_size: forget minibatch size.
      stopping: stopping rule on forget accuracy (cap 10 epochs).
      rewind: SCRUB+R rewinding (needs ``data.val_forget_*``).
      progress: show a progress bar.
    """

    optimizer: OptimizerConfig = OptimizerConfig(
        name="adam",
        learning_rate=5e-4,
        weight_decay=5e-4,
        lr_decay_epochs=(3, 5, 9),
        lr_decay_rate=0.1,
    )
    temperature: float = 2.0
    gamma: float = 1.0
    alpha: float = 0.5
    max_steps_epochs: int = 3
    batch_size: int = 128
    forget_batch_size: int = 32
    stopping: StoppingConfig = StoppingConfig(max_epochs=10)
    rewind: bool = False
    progress: bool = True

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"SCRUBConfig.temperature must be > 0, got {self.temperature!r}.")
        for name in ("gamma", "alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SCRUBConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        if not isinstance(self.max_steps_epochs, int) or self.max_steps_epochs < 0:
            raise ValueError(
                f"SCRUBConfig.max_steps_epochs must be an int >= 0, got {self.max_steps_epochs!r}."
            )
        for name in ("batch_size", "forget_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SCRUBConfig.{name} must be an int >= 1, got {value!r}.")


def scrub_losses(apply_fn: ApplyFn, config: SCRUBConfig):
    """The ``(max_loss, min_loss)`` pair, each ``(params, (rest, teacher_params), batch) -> (loss, aux)``.

    ``max_loss`` is the *negated* forget KL (minimising it maximises the KL); ``min_loss`` is
    gamma * CE + alpha * KL on retain data.
    """
    t = config.temperature

    def logits_pair(params, context, x):
        rest, teacher_params = context
        student = apply_fn(merge_params(rest, params), x)
        teacher = jax.lax.stop_gradient(apply_fn(merge_params(rest, teacher_params), x))
        return student, teacher

    def max_loss(params, context, batch):
        x, _, w = batch
        student, teacher = logits_pair(params, context, x)
        kl = distill_kl(student, teacher, t, w)
        return -kl, kl

    def min_loss(params, context, batch):
        x, y, w = batch
        student, teacher = logits_pair(params, context, x)
        kl = distill_kl(student, teacher, t, w)
        return config.gamma * cross_entropy(student, y, w) + config.alpha * kl, kl

    return max_loss, min_loss


def scrub(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    data: UnlearningData,
    config: SCRUBConfig = SCRUBConfig(),
    *,
    key: jax.Array,
) -> tuple[dict[str, Any], CostRecord, Trajectory]:
    """Runs SCRUB (or SCRUB+R) on ``variables['params']``; other collections are kept.

    Returns:
      ``(new variables, cost at the stopping epoch, trajectory)``; with rewinding,
      ``cost.extra['rewound_to_epoch']`` says which epoch's params were returned.
    """
    data = validate_unlearning_data(apply_fn, variables, data)
    if config.rewind and data.val_forget_x is None:
        raise ValueError(
            "SCRUBConfig.rewind=True needs held-out forget-distribution data in data.val_forget_x/val_forget_y "
            "(e.g. the forget class's test split)."
        )
    max_loss, min_loss = scrub_losses(apply_fn, config)
    teacher = variables["params"]
    msteps = config.max_steps_epochs
    phases = [
        Phase(
            "max",
            max_loss,
            data.forget_x,
            data.forget_y,
            min(config.forget_batch_size, data.forget_x.shape[0]),
            active=lambda epoch: epoch <= msteps,
            context=teacher,
        ),
        Phase(
            "min",
            min_loss,
            data.retain_x,
            data.retain_y,
            min(config.batch_size, data.retain_x.shape[0]),
            context=teacher,
        ),
    ]
    new_vars, cost, traj, snapshots = train_loop(
        "scrub+r" if config.rewind else "scrub",
        apply_fn,
        variables,
        phases,
        key=key,
        optimizer=config.optimizer,
        stopping=config.stopping,
        monitor=monitor_splits(data),
        progress=config.progress,
        keep_snapshots=config.rewind,
    )
    if config.rewind:
        reference_error = 1.0 - traj.val_forget_acc[-1]
        forget_error = 1.0 - np.asarray(traj.forget_acc)
        epoch = int(np.argmin(np.abs(forget_error - reference_error)))
        new_vars = merge_params(new_vars, snapshots[epoch])
        cost = cost.with_extra(
            rewound_to_epoch=epoch, rewind_reference_error=float(reference_error)
        )
    return new_vars, cost, traj
