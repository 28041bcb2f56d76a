"""Unlearning methods: validated wrappers that return (new variables, AuditRecord).

Each wrapper validates its inputs, computes a selection with the pure array-level core
(:mod:`dkvb_jax.unlearning.selection`), applies it with :mod:`dkvb_jax.unlearning.masking` and
records the call. The input variables are never modified.

Counting (our choice): by default the forget data's codes are taken with the *search mask
cleared*, i.e. on the model as trained. The selection then depends only on the request, not on
earlier requests, so a data pass gives the same selection as a histogram stored at training
time, and repeating a request changes nothing. ``count_with_masks=True`` counts on the current
masked model instead: a repeated request then chases the keys the forget inputs fell back to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _validation
from dkvb_jax.errors import InputError, InputTypeError
from dkvb_jax.model import DKVB
from dkvb_jax.training import compute_codes, usage_from_codes
from dkvb_jax.unlearning import _checks, masking, registry
from dkvb_jax.unlearning import selection as sel_lib
from dkvb_jax.unlearning.audit import AuditRecord, make_record

EvalFn = Callable[[dict], dict]
Codes = tuple[jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetainAware:
    """Retain-aware selection: spare a key when ``retain_rate > ratio * forget_rate + margin``.

    Rates are per-codebook retrieval frequencies (see :func:`selection.retain_aware`).
    """

    ratio: float = 4.0
    margin: float = 0.0

    def __post_init__(self):
        if not self.ratio >= 0:
            raise InputError(f"RetainAware.ratio must be >= 0, got {self.ratio!r}.")
        if not 0 <= self.margin <= 1:
            raise InputError(f"RetainAware.margin must be in [0, 1], got {self.margin!r}.")


def accuracy_effect(model: DKVB, x, y, forget_classes) -> EvalFn:
    """An `eval_fn` measuring forget-class and retain-class accuracy on `(x, y)`."""
    x, y = jnp.asarray(x), np.asarray(y)
    forget = np.isin(y, np.asarray(forget_classes))

    @jax.jit
    def predict(v):
        return model.apply(v, x).argmax(-1)

    def fn(v):
        correct = np.asarray(predict(v)) == y
        return {
            "forget_accuracy": float(correct[forget].mean()) if forget.any() else None,
            "retain_accuracy": float(correct[~forget].mean()) if (~forget).any() else None,
        }

    return fn


def _counting_variables(variables: dict, count_with_masks: bool) -> dict:
    return variables if count_with_masks else masking.clear_masks(variables, ("search",))


def _codes_of(model, variables, x, name, count_with_masks) -> Codes:
    _validation.check_embeddings(x, model.config.embed_dim, name=name, allow_tokens=False)
    return compute_codes(model, _counting_variables(variables, count_with_masks), x)


def _check_codes(codes, config, name) -> Codes:
    if not isinstance(codes, tuple | list) or len(codes) != 2:
        raise InputTypeError(f"{name} must be a pair (indices, valid) from compute_codes.")
    idx, valid = codes
    _validation.check_codes(idx, valid, config.num_keys, name=name)
    shape = (config.num_codebooks, config.top_k)
    if idx.ndim != 3 or tuple(idx.shape[1:]) != shape or valid.shape != idx.shape:
        raise InputError(
            f"{name} must be (indices, valid) of shape [n, codebooks, top_k] = [n, *{shape}], "
            f"got {tuple(idx.shape)} and {tuple(valid.shape)}."
        )
    if idx.shape[0] == 0:
        raise InputError(f"{name} is empty: there is nothing to forget.")
    return jnp.asarray(idx), jnp.asarray(valid)


def _common_checks(model, variables, mode, rekey, rng, hard, eval_fn) -> masking.MaskingOptions:
    """Checks what every wrapper takes; returns the masking options as one pack."""
    _checks.check_variables(model.config, variables)
    options = masking.MaskingOptions(mode=mode, hard=hard, rekey=rekey, rng=rng)
    if eval_fn is not None and not callable(eval_fn):
        raise InputTypeError(f"eval_fn must map variables to a dict, got {type(eval_fn).__name__}.")
    return options


def _finish(
    variables: dict,
    selection: jax.Array,
    options: masking.MaskingOptions,
    *,
    method: str,
    params: dict,
    spared,
    eval_fn: EvalFn | None,
    classes=None,
    examples=None,
) -> tuple[dict, AuditRecord]:
    """Applies `selection` `[codebooks, keys]` as `options` say and records the call."""
    new = options.apply(variables, selection)
    effect = None if eval_fn is None else {"before": eval_fn(variables), "after": eval_fn(new)}
    record = make_record(
        method=method,
        params={**params, **options.params()},
        before=variables,
        after=new,
        forgotten_classes=classes,
        forgotten_examples=examples,
        spared=spared,
        effect=effect,
    )
    return new, record


def _apply_retain_aware(selection, forget_counts, retain_counts, retain_aware):
    if retain_aware is None:
        return selection, None, {}
    selection, spared = sel_lib.retain_aware(
        selection,
        forget_counts,
        retain_counts,
        ratio=retain_aware.ratio,
        margin=retain_aware.margin,
    )
    return (
        selection,
        spared,
        {"retain_ratio": retain_aware.ratio, "retain_margin": retain_aware.margin},
    )


def unlearn_via_activations(
    model: DKVB,
    variables: dict,
    n_a: int,
    *,
    forget_x=None,
    usage=None,
    classes=None,
    retain_x=None,
    retain_aware: RetainAware | None = None,
    mode: masking.MaskMode = "search",
    hard: bool = False,
    rekey: masking.Rekey = None,
    rng: jax.Array | None = None,
    count_with_masks: bool = False,
    eval_fn: EvalFn | None = None,
) -> tuple[dict, AuditRecord]:
    """UvA: masks the `n_a` most-retrieved keys of every codebook.

    Give either the forget data (`forget_x`, one data pass), or a stored per-class histogram
    (`usage` `[classes, codebooks, keys]` with the forget `classes`: no data pass at all; each
    class loses its own top `n_a` keys).

    Args:
      model: the DKVB module.
      variables: its variables (unchanged).
      n_a: keys per codebook (and per class with `usage`), in [1, num_keys].
      forget_x: forget embeddings `[n, embed_dim]`.
      usage: per-class histogram from `key_usage(model, variables, x, labels)`.
      classes: forget class ids (int or sequence); required with `usage`, recorded otherwise.
      retain_x: retain embeddings `[m, embed_dim]`, needed for `retain_aware` with `forget_x`
        (with `usage` the other classes' counts are used).
      retain_aware: spare keys retain data uses far more; None disables it.
      mode: ``search`` (default) or ``readout`` masking.
      hard: also zero the values of the masked pairs (hard deletion).
      rekey: with `hard`, re-place their keys: None, ``'far'`` or ``'random'`` (needs `rng`).
      rng: PRNG key for ``rekey='random'``; the same key makes a repeated request a no-op.
      count_with_masks: count on the current masked model (see the module docstring).
      eval_fn: maps variables to a metrics dict; recorded before and after in the audit.

    Returns:
      (new variables, :class:`AuditRecord`); the record's method is the registered spec it
      ran: ``uva`` (per-class top `n_a` from `usage`) or ``uva_pass`` (top `n_a` of the counts
      pooled over `forget_x`).

    Raises:
      ValueError / TypeError (:class:`~dkvb_jax.errors.InputError`): bad arguments, named in
        the message; among them a `usage` with NaN/inf, negative or fractional counts, and a
        forget class whose `usage` row is all zero (an error, not a warning: the histogram never
        saw that class, so nothing would be masked).
    """
    cfg = model.config
    traced = dict(variables=variables, forget_x=forget_x, usage=usage, retain_x=retain_x)
    _checks.check_concrete("unlearn_via_activations", **traced)
    options = _common_checks(model, variables, mode, rekey, rng, hard, eval_fn)
    n_a = _checks.check_n(n_a, cfg.num_keys, "n_a")
    if (forget_x is None) == (usage is None):
        raise InputError("unlearn_via_activations: pass exactly one of forget_x or usage.")
    if usage is not None:
        if classes is None:
            raise InputError("unlearn_via_activations: usage needs the forget classes= as well.")
        classes = _checks.check_classes(classes, cfg.num_classes)
        _checks.check_histogram(usage, cfg, classes=classes)
        counted = _uva_from_usage(jnp.asarray(usage), classes, n_a, retain_aware is not None)
        name, source = registry.UVA.name, "usage histogram"
    else:
        if classes is not None:
            classes = _checks.check_classes(classes, cfg.num_classes)
        counted = _uva_from_pass(
            model, variables, forget_x, retain_x, n_a, count_with_masks, retain_aware is not None
        )
        name, source = registry.UVA_PASS.name, "data pass"
    selection, forget_counts, retain_counts = counted
    selection, spared, extra = _apply_retain_aware(
        selection, forget_counts, retain_counts, retain_aware
    )
    params = {"n_a": n_a, "source": source, "count_with_masks": count_with_masks, **extra}
    return _finish(
        variables,
        selection,
        options,
        method=name,
        params=params,
        spared=spared,
        eval_fn=eval_fn,
        classes=classes,
    )


def _uva_from_usage(usage: jax.Array, classes, n_a: int, with_retain: bool):
    """UvA on a per-class histogram `[classes, codebooks, keys]`: each class's top `n_a`.

    Returns:
      The selection, the forget counts `[codebooks, keys]` and, `with_retain`, the other
      classes' counts (else None).
    """
    # registry.UVA's selection, with the classes known: only their rows are ranked (the spec
    # ranks every class, as it must when the forget set is traced; at 1000 classes that is
    # 1000 times the work).
    forget_rows = usage[jnp.asarray(classes)]
    selection = sel_lib.mask_top_n(forget_rows, n_a).any(axis=0)
    forget_counts = jnp.sum(forget_rows, axis=0)
    retain_counts = jnp.sum(usage, axis=0) - forget_counts if with_retain else None
    return selection, forget_counts, retain_counts


def _uva_from_pass(model, variables, forget_x, retain_x, n_a, count_with_masks, with_retain):
    """UvA on one data pass over `forget_x`: the top `n_a` of the pooled counts.

    Returns:
      As :func:`_uva_from_usage`; the retain counts come from `retain_x`.
    """
    num_keys = model.config.num_keys
    idx, valid = _codes_of(model, variables, forget_x, "forget_x", count_with_masks)
    stats = registry.CodesStats(idx, valid, jnp.ones(idx.shape[:1], bool), num_keys)
    selection = registry.UVA_PASS.select(stats, n_a)
    forget_counts = usage_from_codes(idx, valid, num_keys)
    retain_counts = None
    if with_retain:
        if retain_x is None:
            raise InputError("retain_aware with forget_x needs retain_x (retain embeddings).")
        retain_counts = usage_from_codes(
            *_codes_of(model, variables, retain_x, "retain_x", count_with_masks), num_keys
        )
    return selection, forget_counts, retain_counts


def unlearn_via_examples(
    model: DKVB,
    variables: dict,
    forget_x=None,
    *,
    codes: Codes | None = None,
    n_e: int | None = None,
    classes=None,
    retain_x=None,
    retain_codes: Codes | None = None,
    retain_aware: RetainAware | None = None,
    mode: masking.MaskMode = "search",
    hard: bool = False,
    rekey: masking.Rekey = None,
    rng: jax.Array | None = None,
    count_with_masks: bool = False,
    eval_fn: EvalFn | None = None,
    method: str = "uve",
    example_ids=None,
) -> tuple[dict, AuditRecord]:
    """UvE: masks every key retrieved by the first `n_e` forget examples.

    Args:
      forget_x: forget embeddings `[n, embed_dim]`, or
      codes: their precomputed codes (indices, valid) `[n, codebooks, top_k]`; every index
        marked valid must be a key id in `[0, num_keys)`.
      n_e: examples to use (the first `n_e` rows; shuffle beforehand for a random subset);
        None uses all of them.
      classes: forget class ids, recorded in the audit.
      retain_x / retain_codes: retain data, needed with `retain_aware`.
      method, example_ids: recorded in the audit (set by :func:`forget_examples`).
      Others as in :func:`unlearn_via_activations`.

    Returns:
      (new variables, :class:`AuditRecord`).
    """
    cfg = model.config
    traced = dict(variables=variables, forget_x=forget_x, codes=codes, retain_x=retain_x)
    _checks.check_concrete(method, **traced, retain_codes=retain_codes)
    options = _common_checks(model, variables, mode, rekey, rng, hard, eval_fn)
    if (forget_x is None) == (codes is None):
        raise InputError(f"{method}: pass exactly one of forget_x or codes.")
    if classes is not None:
        classes = _checks.check_classes(classes, cfg.num_classes)
    if codes is None:
        codes = _codes_of(model, variables, forget_x, "forget_x", count_with_masks)
    idx, valid = _check_codes(codes, cfg, "codes")
    if n_e is not None:
        n_e = _checks.check_n(n_e, idx.shape[0], "n_e", counts="forget examples")
        idx, valid = idx[:n_e], valid[:n_e]
    forget_counts = usage_from_codes(idx, valid, cfg.num_keys)
    stats = registry.CodesStats(idx, valid, jnp.ones(idx.shape[:1], bool), cfg.num_keys)
    selection = registry.UVE.select(stats, idx.shape[0])
    retain_counts = None
    if retain_aware is not None:
        if (retain_x is None) == (retain_codes is None):
            raise InputError(
                f"{method}: retain_aware needs exactly one of retain_x or retain_codes."
            )
        if retain_codes is None:
            retain_codes = _codes_of(model, variables, retain_x, "retain_x", count_with_masks)
        retain_counts = usage_from_codes(
            *_check_codes(retain_codes, cfg, "retain_codes"), cfg.num_keys
        )
    selection, spared, extra = _apply_retain_aware(
        selection, forget_counts, retain_counts, retain_aware
    )
    params = {"n_e": int(idx.shape[0]), "count_with_masks": count_with_masks, **extra}
    return _finish(
        variables,
        selection,
        options,
        method=method,
        params=params,
        spared=spared,
        eval_fn=eval_fn,
        classes=classes,
        examples=example_ids,
    )


def forget_classes(
    model: DKVB,
    variables: dict,
    classes,
    n_a: int,
    *,
    usage=None,
    x=None,
    y=None,
    **kwargs,
) -> tuple[dict, AuditRecord]:
    """Forgets one or several classes at once with UvA (each class loses its top `n_a` keys).

    Args:
      classes: class id or ids; forgetting every class is refused.
      n_a: keys per codebook and class.
      usage: stored per-class histogram `[classes, codebooks, keys]`, or
      x, y: labelled training embeddings and labels to build it (one data pass, unmasked).
      **kwargs: retain_aware, mode, hard, rekey, rng, eval_fn as in
        :func:`unlearn_via_activations`.

    Raises:
      ValueError / TypeError: as :func:`unlearn_via_activations`; a class with no recorded usage
        (no row of it in `y`, or an all-zero row of `usage`) is refused.
    """
    cfg = model.config
    _checks.check_variables(cfg, variables)
    if (usage is None) == (x is None):
        raise InputError("forget_classes: pass exactly one of usage or (x, y).")
    if usage is None:
        if y is None:
            raise InputError("forget_classes: x needs its labels y.")
        _validation.check_embeddings(x, cfg.embed_dim, name="x", allow_tokens=False)
        _validation.check_labels(y, cfg.num_classes, n=x.shape[0], name="y")
        idx, valid = compute_codes(model, masking.clear_masks(variables, ("search",)), x)
        usage = usage_from_codes(idx, valid, cfg.num_keys, jnp.asarray(y), cfg.num_classes)
    new, record = unlearn_via_activations(
        model, variables, n_a, usage=usage, classes=classes, **kwargs
    )
    return new, dataclasses.replace(record, method="forget_classes")


def forget_examples(
    model: DKVB,
    variables: dict,
    example_ids,
    *,
    codes: Codes | None = None,
    x=None,
    retain_aware: RetainAware | None = None,
    **kwargs,
) -> tuple[dict, AuditRecord]:
    """Sample-level forgetting: masks every pair the named training examples retrieve.

    A weak tool for examples: a random set of training rows retrieves keys at the rate the rest
    of the data does, so even 1% of the rows masks a large share of all pairs and costs retain
    accuracy (``experiments/certified_unlearning.py`` measures both), and the record is never
    certified. On a model with closed-form values (``ExperimentConfig(values="counts")``),
    :func:`dkvb_jax.exact.remove_examples` removes the same rows exactly and cheaply.

    Args:
      example_ids: int ids (rows of `codes` / `x`) of the examples to forget.
      codes: codes (indices, valid) `[n, codebooks, top_k]` of the whole training set, computed
        once (e.g. by value training), or
      x: the training embeddings `[n, embed_dim]`.
      retain_aware: spare keys that the other training examples use far more.
      **kwargs: mode, hard, rekey, rng, eval_fn as in :func:`unlearn_via_activations`.
    """
    cfg = model.config
    _checks.check_variables(cfg, variables)
    if (codes is None) == (x is None):
        raise InputError("forget_examples: pass exactly one of codes or x.")
    if codes is None:
        codes = _codes_of(model, variables, x, "x", False)
    idx, valid = _check_codes(codes, cfg, "codes")
    ids = _checks.check_example_ids(example_ids, idx.shape[0])
    keep = np.ones(idx.shape[0], bool)
    keep[ids] = False
    retain_codes = (idx[keep], valid[keep]) if retain_aware is not None and keep.any() else None
    if retain_aware is not None and retain_codes is None:
        raise InputError("forget_examples: every example is named, nothing is left to retain.")
    return unlearn_via_examples(
        model,
        variables,
        codes=(idx[ids], valid[ids]),
        retain_codes=retain_codes,
        retain_aware=retain_aware,
        method="forget_examples",
        example_ids=ids.tolist(),
        **kwargs,
    )
