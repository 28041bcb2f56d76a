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
from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB
from dkvb_jax.unlearning import _checks, fast_eval, masking
from dkvb_jax.unlearning.registry import get_method, masking_methods
from dkvb_jax.unlearning.spec import ForgetData, UnlearningMethod, restricted


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Accuracy along a sweep.

    Attributes:
      method: the registered method's name (``uva``, ``uve``, ...).
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


def _check_request(model, variables, classes, val_x, val_y, mode):
    """Checks shared by every sweep; returns the class ids."""
    cfg = model.config
    _checks.check_variables(cfg, variables)
    masking.check_mode(mode)
    classes = _checks.check_classes(classes, cfg.num_classes)
    _validation.check_embeddings(val_x, cfg.embed_dim, name="val_x", allow_tokens=False)
    _validation.check_labels(val_y, cfg.num_classes, n=val_x.shape[0], name="val_y")
    return classes


def sweep(
    method: str | UnlearningMethod,
    model: DKVB,
    variables: dict,
    data: ForgetData,
    val_x,
    val_y,
    ns=None,
    *,
    target: float = 0.0,
    mode: masking.MaskMode = "search",
    clip: bool = False,
) -> SweepResult:
    """Forget/retain validation accuracy of a masking method for every size in `ns`.

    Validation codes are ranked once; the selections of all sizes are one `vmap` of the
    method's `select` over N, and every variant is evaluated from the ranking.

    Args:
      method: a registered masking method's name or spec.
      model, variables: the trained DKVB.
      data: the forget request (its `classes` split the validation rows into forget / retain).
      val_x, val_y: validation embeddings `[m, embed_dim]` and labels `[m]`.
      ns: sizes to try; None: the method's default grid (clipped to what the request allows).
      target: forget accuracy to reach.
      mode: mask mode.
      clip: try sizes above what the request allows (e.g. a config's grid, shared by
        classes of different sizes) at the largest allowed size instead of refusing them.
    """
    method = get_method(method) if isinstance(method, str) else method
    if method.select is None:
        raise InputError(
            f"{method.name} has no size to sweep; masking methods: {', '.join(masking_methods())}."
        )
    classes = _check_request(model, variables, data.classes, val_x, val_y, mode)
    if ns is None:
        ns, clip = method.size.default_grid, True
    ns = list(ns)
    ints = [n for n in ns if isinstance(n, int | np.integer) and not isinstance(n, bool)]
    stats = method.statistics(model, variables, restricted(method, data, max(ints, default=None)))
    upper = method.upper(model.config, stats)
    if clip:  # a size above what the request allows tries all of it
        ns = sorted({min(n, upper) for n in ns})
    ns = _check_ns(list(ns), upper, "ns", counts=method.size.counts)
    # N = 0 (nothing masked) gives the baseline in the same pass.
    selections = jax.vmap(method.select, in_axes=(None, 0))(stats, jnp.asarray([0, *ns]))
    depth = method.lookup_depth(model.config, stats, max(ns))
    pred = fast_eval.variant_predictions(model, variables, selections, val_x, depth, mode=mode)
    forget = np.isin(np.asarray(val_y), classes)[:, None]
    fs, rs = fast_eval.split_accuracies(pred, val_y, forget)
    fs, rs = fs.tolist(), rs.tolist()
    hit = [n for n, f in zip(ns, fs[1:], strict=True) if f <= target]
    return SweepResult(
        method.name, ns, fs[1:], rs[1:], (fs[0], rs[0]), target, hit[0] if hit else None
    )


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
    data = ForgetData(classes=_as_classes(classes), usage=usage)
    return sweep("uva", model, variables, data, val_x, val_y, ns, target=target, mode=mode)


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
    _validation.check_embeddings(forget_x, cfg.embed_dim, name="forget_x", allow_tokens=False)
    data = ForgetData(classes=_as_classes(classes), forget_x=forget_x)
    return sweep("uve", model, variables, data, val_x, val_y, ns, target=target, mode=mode)


def _as_classes(classes):
    """Class ids as given, as a tuple for :class:`ForgetData` (checked by the sweep)."""
    if isinstance(classes, int | np.integer) and not isinstance(classes, bool):
        return (classes,)
    return classes
