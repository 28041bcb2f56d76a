"""The registered unlearning methods: UvA (two sources), UvE and exact removal.

Adding a method is one :class:`~dkvb_jax.unlearning.spec.UnlearningMethod` and one
:func:`register_method` call; the contract test (``tests/unlearning/test_method_contract.py``)
then checks it with every other method.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB
from dkvb_jax.training import compute_codes, usage_from_codes
from dkvb_jax.unlearning import _checks, masking
from dkvb_jax.unlearning import selection as sel_lib
from dkvb_jax.unlearning.spec import (
    Core,
    ForgetData,
    SizeParam,
    UnlearningMethod,
    costed_core,
    masking_edit,
    restricted,
)

METHODS: dict[str, UnlearningMethod] = {}


def register_method(method: UnlearningMethod, *, replace: bool = False) -> UnlearningMethod:
    """Adds `method` to :data:`METHODS` under `method.name`; refuses a taken name."""
    if method.name in METHODS and not replace:
        raise ValueError(f"an unlearning method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> UnlearningMethod:
    """The registered method called `name`, or an error listing the registered names."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(
            f"unknown unlearning method {name!r}; registered: {', '.join(METHODS)}."
        ) from None


def default_grid(size_name: str) -> tuple[int, ...]:
    """The default grid of the first registered method whose size parameter is `size_name`."""
    for method in METHODS.values():
        if method.size is not None and method.size.name == size_name:
            return method.size.default_grid
    raise InputError(f"no registered method has a size parameter named {size_name!r}.")


def masking_methods() -> tuple[str, ...]:
    """Names of the registered methods that mask pairs (and so can be swept over their size)."""
    return tuple(name for name, m in METHODS.items() if m.select is not None)


# --------------------------------------------------------------------------- statistics types


@flax.struct.dataclass
class HistogramStats:
    """A stored per-class histogram and the forget classes.

    Attributes:
      usage: `[classes, codebooks, keys]` retrieval counts per class.
      forget: bool `[classes]`, True for the classes to forget (a leading set axis when stacked).
      loop_free: rank through `lax.top_k` rather than bisection (the same keys), for counting
        FLOPs (static; see :func:`~dkvb_jax.unlearning.selection.mask_top_n`).
    """

    usage: jax.Array
    forget: jax.Array
    loop_free: bool = flax.struct.field(pytree_node=False, default=False)


@flax.struct.dataclass
class CodesStats:
    """Codes of candidate forget examples and which of them form the forget set.

    Attributes:
      indices: int32 `[n, codebooks, top_k]` (-1 where invalid).
      valid: bool `[n, codebooks, top_k]`.
      member: bool `[n]`, the rows of the forget set, in order (a leading set axis when stacked).
      num_keys: keys per codebook (static).
      loop_free: as in :class:`HistogramStats` (static).
    """

    indices: jax.Array
    valid: jax.Array
    member: jax.Array
    num_keys: int = flax.struct.field(pytree_node=False)
    loop_free: bool = flax.struct.field(pytree_node=False, default=False)


@flax.struct.dataclass
class ExactStats:
    """Label statistics of closed-form values and the rows to remove.

    Attributes:
      label_stats: :class:`dkvb_jax.exact.LabelStats`.
      forget: bool `[examples]` over its rows (a leading set axis when stacked).
      estimator: the :class:`dkvb_jax.exact.EstimatorConfig` the values are derived with (static).
    """

    label_stats: object
    forget: jax.Array
    estimator: object = flax.struct.field(pytree_node=False)


# --------------------------------------------------------------------------- statistics steps


def _histogram_stats(model: DKVB, variables: dict, data: ForgetData) -> HistogramStats:
    cfg = model.config
    if data.classes is None:
        raise InputError(
            "uva masks each forget class's most-retrieved keys from the stored histogram: it "
            "forgets classes; for examples use uve or exact."
        )
    if data.usage is None:
        raise InputError("uva needs the stored per-class usage histogram (key_usage).")
    classes = _checks.check_classes(data.classes, cfg.num_classes)
    _checks.check_histogram(data.usage, cfg, classes=classes)
    forget = jnp.zeros((cfg.num_classes,), bool).at[jnp.asarray(classes)].set(True)
    return HistogramStats(jnp.asarray(data.usage), forget)


def _codes_stats(model: DKVB, variables: dict, data: ForgetData) -> CodesStats:
    cfg = model.config
    if data.codes is None and data.forget_x is None:
        raise InputError("this method needs the forget examples: pass codes or forget_x.")
    if data.codes is None:
        # Counted on the model as trained, so a request does not depend on earlier ones.
        trained = masking.clear_masks(variables, ("search",))
        idx, valid = compute_codes(model, trained, data.forget_x)
    else:
        idx, valid = (jnp.asarray(a) for a in data.codes)
    member = np.ones(idx.shape[0], bool)
    if data.rows is not None:  # codes of a pool (e.g. the training set) and its forget rows
        rows = _checks.check_example_ids(data.rows, idx.shape[0], name="rows")
        member = np.isin(np.arange(idx.shape[0]), rows)
    return CodesStats(idx, valid, jnp.asarray(member), cfg.num_keys)


def _exact_stats(model: DKVB, variables: dict, data: ForgetData) -> ExactStats:
    from dkvb_jax.exact.api import DEFAULT_ESTIMATOR  # exact builds on unlearning: import late

    stats = data.label_stats
    if stats is None:
        raise InputError(
            "exact removal needs the model's label statistics (fit with values='counts')."
        )
    if (data.classes is None) == (data.example_ids is None):
        raise InputError("exact removal: name exactly one of classes or example_ids.")
    if data.classes is not None:
        forget = np.isin(np.asarray(stats.labels), np.asarray(data.classes))
    else:
        forget = np.isin(np.asarray(stats.ids), np.asarray(data.example_ids))
    estimator = DEFAULT_ESTIMATOR if data.estimator is None else data.estimator
    return ExactStats(stats, jnp.asarray(forget), estimator)


# --------------------------------------------------------------------------- selections


def _uva_select(stats: HistogramStats, n) -> jax.Array:
    return sel_lib.mask_top_n_per_class(stats.usage, stats.forget, n, loop_free=stats.loop_free)


def _pooled_counts(stats: CodesStats, member: jax.Array) -> jax.Array:
    return usage_from_codes(stats.indices, stats.valid, stats.num_keys, weights=member)


def _uva_pass_select(stats: CodesStats, n) -> jax.Array:
    return sel_lib.mask_top_n(_pooled_counts(stats, stats.member), n, loop_free=stats.loop_free)


def _uve_select(stats: CodesStats, n) -> jax.Array:
    first_n = stats.member & (jnp.cumsum(stats.member) <= n)
    return _pooled_counts(stats, first_n) > 0


def _exact_edit(variables: dict, stats: ExactStats, n=None, mode: str = "search") -> dict:
    from dkvb_jax.exact.api import values_without

    values, _ = values_without(stats.label_stats, stats.forget, stats.estimator)
    params = {**variables["params"], "values": values.astype(variables["params"]["values"].dtype)}
    return {**variables, "params": params}


def _codes_set_axes(s: CodesStats) -> CodesStats:
    return CodesStats(None, None, 0, s.num_keys, s.loop_free)


def _forget_rows(stats: CodesStats) -> int:
    return int(np.asarray(stats.member).sum(-1).max())


def _first_examples(data: ForgetData, n) -> ForgetData:
    """UvE's `restrict`: only the first `n` forget examples are read, so only they are coded."""
    valid_n = isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1
    if not valid_n or data.codes is not None or data.rows is not None or data.forget_x is None:
        return data  # codes already computed, a pool, or a bad `n` the size check reports
    return dataclasses.replace(data, forget_x=data.forget_x[: int(n)])


# --------------------------------------------------------------------------- costed cores


def _loop_free_core(method, model, variables, data, n, mode) -> Core:
    """The edit on statistics gathered before unlearning (the stored histogram), with its FLOPs
    counted on the loop-free top-N (the same keys)."""
    core = costed_core(dataclasses.replace(method, core=None), model, variables, data, n, mode)
    return Core(core.fn, core.args, lambda v, s: core.fn(v, s.replace(loop_free=True)))


def _codes_pass(model: DKVB, variables: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Codes of `x` on the model as trained (search mask cleared), as the statistics step
    counts them; jittable."""
    return model.apply(masking.clear_masks(variables, ("search",)), x, method=DKVB.codes)


def _pass_core(edit_rows):
    """The `core` of a method whose statistics are a pass over the forget examples: that pass
    runs at unlearning time, so it is costed with the edit (FLOPs on the dense lookup and the
    loop-free top-N). `edit_rows(method, variables, stats, n, mode)` edits from the codes of
    the rows given, all of them members."""

    def core(method, model, variables, data, n, mode) -> Core:
        data = restricted(method, data, n)
        if data.forget_x is None or data.codes is not None or data.rows is not None:
            plain = dataclasses.replace(method, core=None)
            return costed_core(plain, model, variables, data, n, mode)
        from dkvb_jax.evaluation.cost import dense_lookup_model  # evaluation builds on this

        def run(m, loop_free, v, x):
            idx, valid = _codes_pass(m, v, x)
            member = jnp.ones(idx.shape[0], bool)
            stats = CodesStats(idx, valid, member, m.config.num_keys, loop_free)
            return edit_rows(method, v, stats, n, mode)

        x = jnp.asarray(data.forget_x)
        flops = functools.partial(run, dense_lookup_model(model), True)
        return Core(functools.partial(run, model, False), (variables, x), flops)

    return core


def _method_edit(method, variables, stats, n, mode):
    return method.edit(variables, stats, n, mode)


def _every_pair_retrieved(method, variables, stats: CodesStats, n, mode):
    # The rows given are UvE's first N_e (its `restrict`): every pair they retrieve.
    selection = sel_lib.codes_selection(stats.indices, stats.valid, stats.num_keys)
    return masking.apply_selection(variables, selection, mode)


UVA = register_method(
    UnlearningMethod(
        name="uva",
        label="UvA",
        summary="masks each forget class's N_a most-retrieved keys per codebook, from the "
        "stored per-class histogram (no data pass)",
        size=SizeParam(
            "n_a", "keys masked per codebook and class", (1, 2, 4, 8, 16, 32, 64, 128, 256)
        ),
        statistics=_histogram_stats,
        select=_uva_select,
        edit=masking_edit(_uva_select),
        set_axes=lambda s: HistogramStats(usage=None, forget=0, loop_free=s.loop_free),
        upper=lambda cfg, s: cfg.num_keys,
        lookup_depth=lambda cfg, s, n: n * int(np.asarray(s.forget).sum(-1).max()) + cfg.top_k,
        requests=("classes",),
        reads="usage",
        core=_loop_free_core,
    )
)

UVA_PASS = register_method(
    UnlearningMethod(
        name="uva_pass",
        label="UvA (data pass)",
        summary="masks the N_a keys per codebook the forget examples retrieve most, pooled over "
        "them, from one pass over the forget data",
        size=SizeParam("n_a", "keys masked per codebook", (1, 2, 4, 8, 16, 32, 64, 128, 256)),
        statistics=_codes_stats,
        select=_uva_pass_select,
        edit=masking_edit(_uva_pass_select),
        set_axes=_codes_set_axes,
        upper=lambda cfg, s: cfg.num_keys,
        lookup_depth=lambda cfg, s, n: n + cfg.top_k,
        reads="forget_x",
        core=_pass_core(_method_edit),
    )
)

UVE = register_method(
    UnlearningMethod(
        name="uve",
        label="UvE",
        summary="masks every pair the first N_e forget examples retrieve",
        size=SizeParam(
            "n_e",
            "forget examples used",
            (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            "forget examples",
        ),
        statistics=_codes_stats,
        select=_uve_select,
        edit=masking_edit(_uve_select),
        set_axes=_codes_set_axes,
        upper=lambda cfg, s: _forget_rows(s),
        lookup_depth=lambda cfg, s, n: n * cfg.top_k + cfg.top_k,
        reads="forget_x",
        core=_pass_core(_every_pair_retrieved),
        restrict=_first_examples,
    )
)

EXACT = register_method(
    UnlearningMethod(
        name="exact",
        label="exact",
        summary="recomputes the closed-form values without the forget rows' label counts "
        "(equal to refitting the values without them)",
        size=None,
        statistics=_exact_stats,
        select=None,
        edit=_exact_edit,
        set_axes=lambda s: ExactStats(label_stats=None, forget=0, estimator=s.estimator),
        upper=lambda cfg, s: 0,
        lookup_depth=None,
        exact=True,
        reads="label_stats",
    )
)

DEFAULT_METHODS: tuple[str, ...] = (UVA.name, UVE.name, EXACT.name)
"""What a class-unlearning comparison runs unless told otherwise: the paper's UvA (from the stored
histogram) and UvE, and exact removal. ``uva_pass`` (UvA from a data pass) runs on request."""


def default_method(*, label_stats: bool) -> str:
    """What ``dkvb unlearn`` runs unless told: exact removal for a model with label statistics
    (closed-form values), else UvA from the stored histogram (no data pass)."""
    return EXACT.name if label_stats else UVA.name
