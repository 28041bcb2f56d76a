"""Retrain oracle: fresh parameters trained on the retain split only.

The oracle is the reference an unlearning method should match. It must never see the forget
data: ``retrain`` does not validate, convert or read ``data.forget_x``/``forget_y`` at all (the
tests pass NaN forget arrays and check the result is bit-identical to a run with real ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from dkvb_jax.baselines.stopping import StoppingConfig
from dkvb_jax.baselines.trainer import TrainConfig, ce_phase, merge_params, train_loop
from dkvb_jax.baselines.types import ApplyFn, Trajectory, UnlearningData, validate_unlearning_data
from dkvb_jax.evaluation.cost import CostRecord

__all__ = ["RetrainConfig", "retrain"]


@dataclasses.dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    """Retrain-from-scratch oracle: `TrainConfig`'s training, from fresh parameters.

    Attributes:
      epochs, batch_size, optimizer: as in `TrainConfig` (the epochs are fixed: the oracle has
        no forget accuracy to stop on).
      progress: show a progress bar (on by default here).
      init_fn: ``key -> fresh params`` with the structure of ``variables['params']``; e.g.
        ``heads.params_initializer(LinearHead(10), embed_dim)``, or for DKVB values
        ``lambda key: jax.tree.map(jnp.zeros_like, variables['params'])``. Required.
    """

    progress: bool = True
    init_fn: Callable[[jax.Array], Any] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.init_fn is not None and not callable(self.init_fn):
            raise TypeError(
                f"RetrainConfig.init_fn must be callable (key -> params), got {type(self.init_fn).__name__}."
            )


def retrain(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    data: UnlearningData,
    config: RetrainConfig,
    *,
    key: jax.Array,
) -> tuple[dict[str, Any], CostRecord, Trajectory]:
    """Trains fresh ``params`` on ``data.retain_*`` only; other collections are kept.

    Args:
      apply_fn: ``apply_fn(variables, x) -> logits``.
      variables: the original model's variables; only their non-params collections and the
        params' structure are used.
      data: the split; ``forget_*`` is never read. ``val_*`` (test data) is only recorded.
      config: ``RetrainConfig`` with ``init_fn``.
      key: PRNG key (initialisation and shuffling).

    Returns:
      ``(retrained variables, cost, trajectory)``.
    """
    if config.init_fn is None:
        raise ValueError(
            "RetrainConfig.init_fn is required: pass a function key -> fresh params, e.g. "
            "dkvb_jax.baselines.heads.params_initializer(LinearHead(num_classes), embed_dim)."
        )
    data = validate_unlearning_data(apply_fn, variables, data, use_forget=False)
    init_key, train_key = jax.random.split(key)
    params = config.init_fn(init_key)
    if jax.tree.structure(params) != jax.tree.structure(variables["params"]):
        raise ValueError(
            "RetrainConfig.init_fn returned params with a different structure than variables['params']: "
            f"{jax.tree.structure(params)} vs {jax.tree.structure(variables['params'])}."
        )
    phase = ce_phase("retain", apply_fn, data.retain_x, data.retain_y, config.batch_size)
    new_vars, cost, traj, _ = train_loop(
        "retrain",
        apply_fn,
        merge_params(variables, params),
        [phase],
        key=train_key,
        optimizer=config.optimizer,
        stopping=StoppingConfig(max_epochs=config.epochs, forget_target=None, patience=None),
        monitor={
            "retain": (data.retain_x, data.retain_y),
            "val_retain": None
            if data.val_retain_x is None
            else (data.val_retain_x, data.val_retain_y),
            "val_forget": None
            if data.val_forget_x is None
            else (data.val_forget_x, data.val_forget_y),
        },
        progress=config.progress,
    )
    return new_vars, cost, traj
