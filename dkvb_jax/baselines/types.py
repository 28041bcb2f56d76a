"""Result and error types of the baselines; the data types are re-exported from evaluation.splits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dkvb_jax.evaluation.splits import (
    ApplyFn,
    UnlearningData,
    check_label_space,
    class_unlearning_data,
    validate_split,
    validate_unlearning_data,
)

__all__ = [
    "ApplyFn",
    "NonFiniteLossError",
    "Trajectory",
    "UnlearningData",
    "check_label_space",
    "class_unlearning_data",
    "validate_split",
    "validate_unlearning_data",
]


class NonFiniteLossError(FloatingPointError):
    """A baseline produced a NaN/inf loss or parameters; nothing from the run is returned."""


@dataclasses.dataclass
class Trajectory:
    """Per-epoch record of a run, for plots and for the stopping decision.

    Lists are aligned: entry i is the state after epoch ``epoch[i]`` (epoch 0 = before training).
    Accuracy entries are None where the split was not measured (e.g. forget data for the
    retrain oracle, which never reads it).
    """

    method: str
    epoch: list[int] = dataclasses.field(default_factory=list)
    forget_acc: list[float | None] = dataclasses.field(default_factory=list)
    retain_acc: list[float | None] = dataclasses.field(default_factory=list)
    val_forget_acc: list[float | None] = dataclasses.field(default_factory=list)
    val_retain_acc: list[float | None] = dataclasses.field(default_factory=list)
    loss: list[float | None] = dataclasses.field(default_factory=list)
    wall_s: list[float] = dataclasses.field(default_factory=list)
    stop_epoch: int | None = None
    stop_reason: str | None = None

    def append(self, **entry: Any) -> None:
        for name in (
            "epoch",
            "forget_acc",
            "retain_acc",
            "val_forget_acc",
            "val_retain_acc",
            "loss",
            "wall_s",
        ):
            getattr(self, name).append(entry.get(name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trajectory:
        return cls(**dict(d))
