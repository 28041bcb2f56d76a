"""The registered unlearning methods: UvA (two sources), UvE and exact removal.

Adding a method is one :class:`~dkvb_jax.unlearning.spec.UnlearningMethod` and one
:func:`register_method` call; the contract test (``tests/unlearning/test_method_contract.py``)
then checks it with every other method.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB
from dkvb_jax.training import compute_codes, usage_from_codes
from dkvb_jax.unlearning import _checks, masking
from dkvb_jax.unlearning import selection as sel_lib
from dkvb_jax.unlearning.spec import ForgetData, SizeParam, UnlearningMethod, masking_edit

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
    """

    usage: jax.Array
    forget: jax.Array


@flax.struct.dataclass
class CodesStats:
    """Codes of candidate forget examples and which of them form the forget set.

    Attributes:
      indices: int32 `[n, codebooks, top_k]` (-1 where invalid).
      valid: bool `[n, codebooks, top_k]`.
      member: bool `[n]`, the rows of the forget set, in order (a leading set axis when stacked).
      num_keys: keys per codebook (static).
    """

    indices: jax.Array
    valid: jax.Array
    member: jax.Array
    num_keys: int = flax.struct.field(pytree_node=False)


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
    return ExactStats(stats, jnp.asarray(forget), DEFAULT_ESTIMATOR)


# --------------------------------------------------------------------------- selections


def _uva_select(stats: HistogramStats, n) -> jax.Array:
    return sel_lib.mask_top_n_per_class(stats.usage, stats.forget, n)


def _pooled_counts(stats: CodesStats, member: jax.Array) -> jax.Array:
    return usage_from_codes(stats.indices, stats.valid, stats.num_keys, weights=member)


def _uva_pass_select(stats: CodesStats, n) -> jax.Array:
    return sel_lib.mask_top_n(_pooled_counts(stats, stats.member), n)


def _uve_select(stats: CodesStats, n) -> jax.Array:
    first_n = stats.member & (jnp.cumsum(stats.member) <= n)
    return _pooled_counts(stats, first_n) > 0


def _exact_edit(variables: dict, stats: ExactStats, n=None, mode: str = "search") -> dict:
    from dkvb_jax.exact.api import values_without

    values, _ = values_without(stats.label_stats, stats.forget, stats.estimator)
    params = {**variables["params"], "values": values.astype(variables["params"]["values"].dtype)}
    return {**variables, "params": params}


def _forget_rows(stats: CodesStats) -> int:
    return int(np.asarray(stats.member).sum(-1).max())


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
        set_axes=lambda s: HistogramStats(usage=None, forget=0),
        upper=lambda cfg, s: cfg.num_keys,
        lookup_depth=lambda cfg, s, n: n * int(np.asarray(s.forget).sum(-1).max()) + cfg.top_k,
        requests=("classes",),
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
        set_axes=lambda s: CodesStats(indices=None, valid=None, member=0, num_keys=s.num_keys),
        upper=lambda cfg, s: cfg.num_keys,
        lookup_depth=lambda cfg, s, n: n + cfg.top_k,
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
        set_axes=lambda s: CodesStats(indices=None, valid=None, member=0, num_keys=s.num_keys),
        upper=lambda cfg, s: _forget_rows(s),
        lookup_depth=lambda cfg, s, n: n * cfg.top_k + cfg.top_k,
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
    )
)
