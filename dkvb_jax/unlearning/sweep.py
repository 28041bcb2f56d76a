"""Sweeps over N_a / N_e: the smallest setting that drives forget accuracy to a target.

The paper's Figures 2-3: forget- and retain-class accuracy on a validation split as functions
of N. Validation codes are ranked once (:mod:`fast_eval`), then every N is evaluated by one
jitted `vmap` over N: no nearest-key search per setting.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _validation
from dkvb_jax.model import DKVB
from dkvb_jax.training import compute_codes
from dkvb_jax.unlearning import _checks, fast_eval, masking
from dkvb_jax.unlearning import selection as sel_lib


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Accuracy along a sweep.

    Attributes:
      method: ``uva`` or ``uve``.
      ns: the N values tried, increasing.
      forget_accuracy: validation accuracy on the forget classes, one per N.
      retain_accuracy: validation accuracy on the other classes, one per N.
      baseline: (forget, retain) accuracy of the model before unlearning.
      target: the forget-accuracy target.
      smallest_n: the smallest N reaching ``forget_accuracy <= target``; None if none does.
    """

    method: str
    ns: list[int]
    forget_accuracy: list[float]
    retain_accuracy: list[float]
    baseline: tuple[float, float]
    target: float
    smallest_n: int | None

    def to_rows(self) -> list[dict]:
        return [
            {"n": n, "forget_accuracy": f, "retain_accuracy": r}
            for n, f, r in zip(self.ns, self.forget_accuracy, self.retain_accuracy, strict=True)
        ]


def _check_ns(ns, upper: int, name: str, counts: str | None = None) -> list[int]:
    ns = sorted({_checks.check_n(n, upper, name, counts=counts) for n in ns}) if len(ns) else []
    if not ns:
        raise ValueError(f"{name} values are empty: give at least one N to try.")
    return ns


def _evaluate(method, model, variables, selections, val_x, val_y, classes, depth, ns, target,
              mode) -> SweepResult:  # fmt: skip
    """Accuracies of the variants `selections` `[1 + len(ns), ...]` (the first masks nothing)."""
    pred = fast_eval.variant_predictions(model, variables, selections, val_x, depth, mode=mode)
    forget = np.isin(np.asarray(val_y), classes)[:, None]
    fs, rs = fast_eval.split_accuracies(pred, val_y, forget)
    fs, rs = fs.tolist(), rs.tolist()
    hit = [n for n, f in zip(ns, fs[1:], strict=True) if f <= target]
    return SweepResult(method, ns, fs[1:], rs[1:], (fs[0], rs[0]), target, hit[0] if hit else None)


def _check_request(model, variables, classes, val_x, val_y, mode):
    """Checks shared by both sweeps; returns the class ids and a bool `[classes]` forget mask."""
    cfg = model.config
    _checks.check_variables(cfg, variables)
    masking.check_mode(mode)
    classes = _checks.check_classes(classes, cfg.num_classes)
    _validation.check_embeddings(val_x, cfg.embed_dim, name="val_x", allow_tokens=False)
    _validation.check_labels(val_y, cfg.num_classes, n=val_x.shape[0], name="val_y")
    forget = jnp.zeros((cfg.num_classes,), bool).at[jnp.asarray(classes)].set(True)
    return classes, forget


def sweep_uva(
    model: DKVB,
    variables: dict,
    usage,
    classes,
    val_x,
    val_y,
    ns,
    *,
    target: float = 0.0,
    mode: masking.MaskMode = "search",
) -> SweepResult:
    """Forget/retain validation accuracy of UvA for every N_a in `ns`, from a stored histogram.

    Args:
      model, variables: the trained DKVB.
      usage: per-class histogram `[classes, codebooks, keys]`.
      classes: forget class id(s).
      val_x, val_y: validation embeddings `[m, embed_dim]` and labels `[m]`.
      ns: N_a values to try.
      target: forget accuracy to reach.
      mode: mask mode.
    """
    cfg = model.config
    classes, forget = _check_request(model, variables, classes, val_x, val_y, mode)
    _checks.check_histogram(usage, cfg, classes=classes)
    ns = _check_ns(list(ns), cfg.num_keys, "ns")
    usage = jnp.asarray(usage)
    # N = 0 (nothing masked) gives the baseline in the same pass.
    selections = jax.vmap(lambda n: sel_lib.mask_top_n_per_class(usage, forget, n))(
        jnp.asarray([0, *ns])
    )
    depth = max(ns) * len(classes) + cfg.top_k
    return _evaluate("uva", model, variables, selections, val_x, val_y, classes, depth, ns,
                     target, mode)  # fmt: skip


def sweep_uve(
    model: DKVB,
    variables: dict,
    forget_x,
    classes,
    val_x,
    val_y,
    ns,
    *,
    target: float = 0.0,
    mode: masking.MaskMode = "search",
) -> SweepResult:
    """Forget/retain validation accuracy of UvE for every N_e in `ns`.

    Args:
      forget_x: forget examples `[n, embed_dim]`; N_e uses the first N_e rows.
      classes: the forget class id(s) the examples belong to (for the accuracy split).
      Others as in :func:`sweep_uva`.
    """
    cfg = model.config
    classes, forget = _check_request(model, variables, classes, val_x, val_y, mode)
    _validation.check_embeddings(forget_x, cfg.embed_dim, name="forget_x", allow_tokens=False)
    ns = _check_ns(list(ns), forget_x.shape[0], "ns", counts="forget examples")
    codes = compute_codes(model, masking.clear_masks(variables, ("search",)), forget_x[: max(ns)])
    idx, valid = codes
    rows = jnp.arange(idx.shape[0])
    selections = jax.vmap(
        lambda n: sel_lib.codes_selection(idx, valid, cfg.num_keys, weights=rows < n)
    )(jnp.asarray([0, *ns]))
    depth = max(ns) * cfg.top_k + cfg.top_k
    return _evaluate("uve", model, variables, selections, val_x, val_y, classes, depth, ns,
                     target, mode)  # fmt: skip
