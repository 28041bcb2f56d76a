"""Closed-form values from per-pair label counts: no gradient steps.

Each estimator is a deterministic, jittable function of the int32 counts
`[codebooks, keys, classes]`, so equal counts give bit-identical values. With the vote decoder
(logits = mean over codebooks of the retrieved values), log-probability values make the model a
product of per-pair experts, a naive-Bayes-like classifier over the discrete codes.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

Kind = Literal["log_prob", "centered_log_prob", "prob"]
KINDS: tuple[str, ...] = ("log_prob", "centered_log_prob", "prob")
Weighting = Literal["none", "information"]
WEIGHTINGS: tuple[str, ...] = ("none", "information")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EstimatorConfig:
    """How values are derived from counts `n[c, k, y]` (n_ck = sum over classes).

    Attributes:
      kind: ``log_prob``: ``log((n_cky + alpha) / (n_ck + alpha * classes))``.
        ``centered_log_prob``: the same minus its mean over the present classes, so a pair no
        example retrieved reads as exactly zero (the official code's "unused pair" rule).
        ``prob``: the smoothed probability itself, ``(n_cky + alpha) / (n_ck + alpha * classes)``,
        the minimiser of a per-pair squared error to the one-hot labels with an alpha prior.
      alpha: Additive (Laplace) smoothing, > 0.
      prior_correction: Subtract the codebook's smoothed log class prior ``log p_c(y)`` (log
        kinds only), turning ``log p(y | pair)`` into a likelihood ratio that does not favour
        frequent classes.
      codebook_weighting: ``none``, or ``information``: scale each codebook's values by its
        mutual information with the label (estimated from the same counts), normalised to mean 1,
        so uninformative codebooks vote less.
      temperature: Values are divided by it (> 0); changes confidence, not the vote's argmax.
      absent_class_value: Value of every pair for a class with no counted example at all (after
        forgetting a class), so the model never predicts it; ``None`` keeps the formula's value.
    """

    kind: Kind = "log_prob"
    alpha: float = 1.0
    prior_correction: bool = False
    codebook_weighting: Weighting = "none"
    temperature: float = 1.0
    absent_class_value: float | None = -1e4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"EstimatorConfig.kind must be one of {KINDS}, got {self.kind!r}.")
        if self.codebook_weighting not in WEIGHTINGS:
            raise ValueError(
                f"EstimatorConfig.codebook_weighting must be one of {WEIGHTINGS}, got "
                f"{self.codebook_weighting!r}."
            )
        if not self.alpha > 0:
            raise ValueError(
                f"EstimatorConfig.alpha must be > 0 (it keeps log-probabilities finite), got "
                f"{self.alpha!r}."
            )
        if not self.temperature > 0:
            raise ValueError(f"EstimatorConfig.temperature must be > 0, got {self.temperature!r}.")
        if self.prior_correction and self.kind == "prob":
            raise ValueError(
                "EstimatorConfig.prior_correction applies to the log kinds only; use "
                "kind='log_prob' or 'centered_log_prob', or prior_correction=False."
            )


def codebook_information(counts: jax.Array) -> jax.Array:
    """Empirical mutual information (nats) between each codebook's key and the label, `[codebooks]`."""
    n = counts.astype(jnp.float32)
    total = jnp.maximum(n.sum(axis=(1, 2), keepdims=True), 1.0)
    p_ky = n / total
    p_k = p_ky.sum(axis=2, keepdims=True)
    p_y = p_ky.sum(axis=1, keepdims=True)
    ratio = jnp.where(p_ky > 0, p_ky / jnp.maximum(p_k * p_y, 1e-30), 1.0)
    return jnp.sum(p_ky * jnp.log(ratio), axis=(1, 2))


def derive_values(counts: jax.Array, config: EstimatorConfig = EstimatorConfig()) -> jax.Array:
    """Values float32 `[codebooks, keys, classes]` from int32 counts; pure and jittable.

    Args:
      counts: int `[codebooks, keys, classes]` (non-negative).
      config: The estimator.

    Returns:
      float32 values of the same shape.
    """
    num_classes = counts.shape[-1]
    a = jnp.float32(config.alpha)
    # Totals in integers first: exact, and independent of the float summation order.
    n = counts.astype(jnp.float32)
    n_k = counts.sum(axis=-1, keepdims=True).astype(jnp.float32)
    n_y = counts.sum(axis=1, keepdims=True)  # [codebooks, 1, classes] int
    present = counts.sum(axis=(0, 1)) > 0  # [classes]
    denom = n_k + a * num_classes
    if config.kind == "prob":
        values = (n + a) / denom
    else:
        values = jnp.log(n + a) - jnp.log(denom)
        if config.prior_correction:
            n_c = n_y.sum(axis=-1, keepdims=True).astype(jnp.float32)
            values = values - (
                jnp.log(n_y.astype(jnp.float32) + a) - jnp.log(n_c + a * num_classes)
            )
        if config.kind == "centered_log_prob":
            w = present.astype(jnp.float32)
            mean = jnp.sum(values * w, axis=-1, keepdims=True) / jnp.maximum(w.sum(), 1.0)
            values = jnp.where(n_k > 0, values - mean, 0.0)
    if config.codebook_weighting == "information":
        info = codebook_information(counts)
        values = values * (info / jnp.maximum(info.mean(), 1e-12))[:, None, None]
    values = values / jnp.float32(config.temperature)
    if config.absent_class_value is not None:
        values = jnp.where(present, values, jnp.float32(config.absent_class_value))
    return values.astype(jnp.float32)
