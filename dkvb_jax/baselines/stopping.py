"""When to stop a baseline: the paper's rule, as a pure function of the forget-accuracy history.

Stop when forget accuracy reaches the target (default 0: the forgotten class is no longer
recognised), or when it has stopped improving (decreasing) for ``patience`` epochs, or at the
epoch cap. The cost of a run is recorded at the stopping epoch.

A cost comparison is only fair at equal forgetting, so the comparisons (``dkvb compare``, the
unlearning-cost benchmark) set the target to the DKVB method's measured forget accuracy and
turn the plateau rule off: a baseline runs until it forgets as much, or to its cap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

__all__ = ["StoppingConfig", "stop_reason"]


@dataclasses.dataclass(frozen=True)
class StoppingConfig:
    """Stopping rule for the unlearning baselines.

    Attributes:
      max_epochs: epoch cap (>= 1).
      forget_target: stop once forget accuracy <= this; None disables the target (e.g. for
        sample forgetting, where the goal is the retrain oracle's accuracy rather than 0).
      patience: stop after this many epochs without forget accuracy dropping by more than
        ``min_delta`` below its best; None disables it.
      min_delta: smallest decrease that counts as improvement.
      split: the monitored split whose accuracy the rule reads: ``forget`` (the forget training
        rows, the paper's rule) or ``val_forget`` (held-out rows of the forgotten class, the
        split a results table compares on).
    """

    max_epochs: int = 10
    forget_target: float | None = 0.0
    patience: int | None = 3
    min_delta: float = 1e-3
    split: Literal["forget", "val_forget"] = "forget"

    @property
    def reads_accuracy(self) -> bool:
        """Whether the rule needs the accuracy of ``split`` (a target or a patience is set)."""
        return self.forget_target is not None or self.patience is not None

    def __post_init__(self):
        if not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            raise ValueError(
                f"StoppingConfig.max_epochs must be an int >= 1, got {self.max_epochs!r}."
            )
        if self.forget_target is not None and not 0.0 <= self.forget_target <= 1.0:
            raise ValueError(
                f"StoppingConfig.forget_target must be in [0, 1] or None, got {self.forget_target!r}."
            )
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(
                f"StoppingConfig.patience must be an int >= 1 or None, got {self.patience!r}."
            )
        if not self.min_delta >= 0.0:
            raise ValueError(f"StoppingConfig.min_delta must be >= 0, got {self.min_delta!r}.")
        if self.split not in ("forget", "val_forget"):
            raise ValueError(
                f"StoppingConfig.split must be 'forget' or 'val_forget', got {self.split!r}."
            )


def stop_reason(forget_acc: Sequence[float], config: StoppingConfig) -> str | None:
    """Why to stop after the last recorded epoch, or None to continue.

    Args:
      forget_acc: forget accuracy before training (index 0) and after each epoch so far.
      config: the rule.

    Returns:
      ``'target'``, ``'plateau'``, ``'max_epochs'`` or None.
    """
    epochs_done = len(forget_acc) - 1
    if epochs_done < 1:
        return None
    last = forget_acc[-1]
    if config.forget_target is not None and last <= config.forget_target:
        return "target"
    if config.patience is not None and epochs_done > config.patience:
        best_before = min(forget_acc[: -config.patience])
        if min(forget_acc[-config.patience :]) > best_before - config.min_delta:
            return "plateau"
    if epochs_done >= config.max_epochs:
        return "max_epochs"
    return None
