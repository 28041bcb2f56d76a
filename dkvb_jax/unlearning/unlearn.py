"""One validated entry point for every registered method: ``unlearn(method, ...)``.

The method's statistics step, its pure edit and the audit record, for any entry of
:data:`dkvb_jax.unlearning.registry.METHODS`. The named wrappers
(:func:`~dkvb_jax.unlearning.methods.unlearn_via_activations`, ...) add method-specific options
(retain-aware sparing, hard deletion) on top of the same selections.
"""

from __future__ import annotations

from collections.abc import Callable

from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB
from dkvb_jax.unlearning import _checks, masking
from dkvb_jax.unlearning.audit import AuditRecord, make_record
from dkvb_jax.unlearning.registry import get_method
from dkvb_jax.unlearning.spec import ForgetData, UnlearningMethod, restricted


def check_size(method: UnlearningMethod, model: DKVB, stats, n) -> int | None:
    """Validates `n` against `method`'s size parameter; None for a method without one."""
    if method.size is None:
        if n is not None:
            raise InputError(f"{method.name} has no size parameter; pass n=None.")
        return None
    return _checks.check_n(
        n, method.upper(model.config, stats), method.size.name, counts=method.size.counts
    )


def unlearn(
    method: str | UnlearningMethod,
    model: DKVB,
    variables: dict,
    data: ForgetData,
    n: int | None = None,
    *,
    mode: masking.MaskMode = "search",
    eval_fn: Callable[[dict], dict] | None = None,
) -> tuple[dict, AuditRecord]:
    """Unlearns `data` with `method`: its statistics, its edit, and the audit record.

    Args:
      method: a registered method's name (``'uva'``, ``'uva_pass'``, ``'uve'``, ``'exact'``, ...)
        or an :class:`UnlearningMethod`.
      model, variables: the trained DKVB (variables are not modified).
      data: what is known of the forget data; the method takes what it needs and says what is
        missing.
      n: the method's size (N_a, N_e); None for exact removal.
      mode: mask mode of a masking method (``search`` or ``readout``).
      eval_fn: maps variables to a metrics dict, recorded before and after in the audit.

    Returns:
      (new variables, :class:`AuditRecord`). An exact removal's record carries the certificate
      derived from the statistics' provenance; a masking record is never certified. For a chain
      of exact removals use :func:`dkvb_jax.exact.remove_examples`, which also returns the
      updated statistics.
    """
    method = get_method(method) if isinstance(method, str) else method
    _checks.check_variables(model.config, variables)
    masking.check_mode(mode)
    if eval_fn is not None and not callable(eval_fn):
        raise InputError(f"eval_fn must map variables to a dict, got {type(eval_fn).__name__}.")
    if method.exact:
        check_size(method, model, None, n)  # exact removal has no size: refuse one given
        method.statistics(model, variables, data)  # its checks: statistics, one request kind
        new, record = _exact(variables, data)
        if eval_fn is not None:
            record = record.with_effect({"before": eval_fn(variables), "after": eval_fn(new)})
        return new, record
    stats = method.statistics(model, variables, restricted(method, data, n))
    n = check_size(method, model, stats, n)
    new = method.edit(variables, stats, n, mode)
    record = make_record(
        method=method.name,
        params={method.size.name: n, "mode": mode},
        before=variables,
        after=new,
        forgotten_classes=data.classes,
        forgotten_examples=None if data.example_ids is None else list(data.example_ids),
        effect=None if eval_fn is None else {"before": eval_fn(variables), "after": eval_fn(new)},
    )
    return new, record


def _exact(variables: dict, data: ForgetData):
    """The exact API's removal for a request the statistics step has checked."""
    from dkvb_jax.exact import api as exact_api  # exact builds on unlearning: import late

    kw = {} if data.estimator is None else {"estimator": data.estimator}
    if data.classes is not None:
        new, _, record = exact_api.remove_classes(variables, data.label_stats, data.classes, **kw)
    else:
        ids = data.example_ids
        new, _, record = exact_api.remove_examples(variables, data.label_stats, ids, **kw)
    return new, record
