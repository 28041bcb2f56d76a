"""The baselines' optimizers: an optax chain (clipping, PyTorch-style weight decay, SGD or Adam)
whose learning rate is an injected hyperparameter, decayed step-wise at given epochs."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp
import optax

__all__ = ["OptimizerConfig", "lr_at_epoch", "make_optimizer", "set_lr"]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer with a step-wise learning-rate decay at given epochs (the repdistiller rule SCRUB uses).

    Attributes:
      name: ``'sgd'`` (with ``momentum``) or ``'adam'``.
      learning_rate: initial learning rate.
      momentum: SGD momentum (ignored by Adam); 0 disables it.
      weight_decay: L2 penalty added to the gradient (PyTorch-style ``weight_decay``).
      grad_clip: global-norm clipping, or None.
      lr_decay_epochs: epochs (1-based) after which the rate is multiplied by ``lr_decay_rate``.
      lr_decay_rate: the multiplier.
    """

    name: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float | None = None
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.1

    def __post_init__(self):
        if self.name not in ("sgd", "adam"):
            raise ValueError(f"OptimizerConfig.name must be 'sgd' or 'adam', got {self.name!r}.")
        if not self.learning_rate > 0:
            raise ValueError(
                f"OptimizerConfig.learning_rate must be > 0, got {self.learning_rate!r}."
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"OptimizerConfig.momentum must be in [0, 1), got {self.momentum!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(
                f"OptimizerConfig.weight_decay must be >= 0, got {self.weight_decay!r}."
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"OptimizerConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}."
            )
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(
                f"OptimizerConfig.lr_decay_rate must be in (0, 1], got {self.lr_decay_rate!r}."
            )


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation; its learning rate is an injected hyperparameter set per epoch."""

    def build(learning_rate):
        parts = []
        if config.grad_clip is not None:
            parts.append(optax.clip_by_global_norm(config.grad_clip))
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        if config.name == "sgd":
            parts.append(optax.sgd(learning_rate, momentum=config.momentum or None))
        else:
            parts.append(optax.adam(learning_rate))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=config.learning_rate)


def lr_at_epoch(config: OptimizerConfig, epoch: int) -> float:
    """Learning rate for 1-based ``epoch``: decayed once for every decay epoch already passed."""
    steps = sum(epoch > e for e in config.lr_decay_epochs)
    return config.learning_rate * config.lr_decay_rate**steps


def set_lr(opt_state: Any, lr: float) -> Any:
    """``opt_state`` of :func:`make_optimizer` with its learning rate set to ``lr``."""
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, dtype=jnp.asarray(hyper["learning_rate"]).dtype)
    return opt_state._replace(hyperparams=hyper)
