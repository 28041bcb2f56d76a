"""Membership inference as in SCRUB: can a logistic regression on per-example loss tell members apart?

Members are the forget set's training examples, non-members are unseen examples of the same
distribution (for class forgetting: the forget class's test split). The two sides are balanced by
subsampling the larger one with an explicit seed, and the attack's accuracy is cross-validated
(stratified k-fold). 0.5 means the attacker cannot tell; a model that memorised its forget set
scores clearly above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dkvb_jax.evaluation.metrics import per_example_loss
from dkvb_jax.evaluation.splits import ApplyFn

__all__ = ["MIAResult", "membership_inference", "mia_attack", "within_noise"]


@dataclasses.dataclass(frozen=True)
class MIAResult:
    """Cross-validated attack accuracy.

    Attributes:
      accuracy: mean accuracy over folds, in [0, 1] (0.5 = chance).
      std: standard deviation over folds.
      n_per_side: members (= non-members) used after balancing.
      n_splits: folds.
    """

    accuracy: float
    std: float
    n_per_side: int
    n_splits: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MIAResult:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def within_noise(a: MIAResult, b: MIAResult) -> bool:
    """Whether two attack accuracies differ by no more than their combined spread over folds.

    The test is ``|a - b| <= sqrt(std_a^2 + std_b^2)``: a change that small could come from the
    choice of folds and the members drawn, so it is no evidence that forgetting changed what
    the attacker sees (e.g. 61% -> 57% from 50 examples per side with a fold std of 5 points).
    """
    return abs(a.accuracy - b.accuracy) <= float(np.hypot(a.std, b.std))


def mia_attack(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, *, seed: int = 0, n_splits: int = 5
) -> MIAResult:
    """Logistic-regression attack on per-example losses.

    Args:
      member_losses: [n_members] losses of training (forget) examples.
      nonmember_losses: [n_nonmembers] losses of unseen examples.
      seed: seed for subsampling the larger side and for the fold shuffle.
      n_splits: cross-validation folds (>= 2).

    Raises:
      ValueError: on non-finite losses, or fewer than ``n_splits`` examples on a side.
    """
    members = np.asarray(member_losses, np.float64).reshape(-1)
    nonmembers = np.asarray(nonmember_losses, np.float64).reshape(-1)
    if not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}.")
    for name, losses in (("member_losses", members), ("nonmember_losses", nonmembers)):
        if losses.size < n_splits:
            raise ValueError(
                f"{name} has {losses.size} examples; the {n_splits}-fold attack needs at least {n_splits} per side."
            )
        if not np.all(np.isfinite(losses)):
            raise ValueError(
                f"{name} contains NaN/inf losses; evaluate a model with finite outputs."
            )
    rng = np.random.default_rng(seed)
    n = min(members.size, nonmembers.size)
    members = rng.choice(members, n, replace=False)
    nonmembers = rng.choice(nonmembers, n, replace=False)
    features = np.concatenate([members, nonmembers])[:, None]
    labels = np.concatenate([np.ones(n, np.int32), np.zeros(n, np.int32)])
    # scikit-learn costs seconds to import; only the attack needs it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    attack = make_pipeline(StandardScaler(), LogisticRegression())
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_score(attack, features, labels, cv=folds, scoring="accuracy")
    return MIAResult(
        accuracy=float(scores.mean()), std=float(scores.std()), n_per_side=int(n), n_splits=n_splits
    )


def membership_inference(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    member_x: jax.Array,
    member_y: jax.Array,
    nonmember_x: jax.Array,
    nonmember_y: jax.Array,
    *,
    seed: int = 0,
    n_splits: int = 5,
) -> MIAResult:
    """SCRUB-style MIA on a model: members = forget train, non-members = forget-class test."""
    return mia_attack(
        per_example_loss(apply_fn, variables, member_x, member_y),
        per_example_loss(apply_fn, variables, nonmember_x, nonmember_y),
        seed=seed,
        n_splits=n_splits,
    )
