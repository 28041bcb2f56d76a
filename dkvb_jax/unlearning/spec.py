"""Unlearning methods as specs: what a method needs, and the pure edit it makes.

An :class:`UnlearningMethod` is to this library what a ``GradientTransformation`` is to optax:
a small record of functions. Its statistics step turns a request (:class:`ForgetData`: the
forget classes or examples, and whatever the caller has: a stored histogram, codes, label
statistics or embeddings) into a statistics pytree, on the host; everything after that is pure
and jittable. A masking method's ``select(stats, n)`` gives the pairs to mask, bool
`[codebooks, keys]`; it ``vmap``s over `n` (a sweep) and over forget sets (each method's
``set_axes`` says which leaves carry the set). A method that edits values instead (exact
unlearning) has ``select=None`` and its own ``edit``.

Methods live in :data:`METHODS` (see :mod:`dkvb_jax.unlearning.registry`); sweeps, the library
wrappers and the CLI iterate over it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.model import DKVB
from dkvb_jax.unlearning import masking

Stats = Any
Variables = dict


@dataclasses.dataclass(frozen=True)
class SizeParam:
    """A method's size parameter: N_a keys per codebook, N_e forget examples, ...

    Attributes:
      name: the argument's name, e.g. ``'n_a'``.
      description: what one unit of it is, for axis labels and help text.
      default_grid: values a sweep tries unless told otherwise, increasing.
      counts: what its upper bound counts when that is not the keys per codebook (e.g.
        ``'forget examples'``), for error messages; None for keys.
    """

    name: str
    description: str
    default_grid: tuple[int, ...]
    counts: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForgetData:
    """What a caller knows about the data to forget; each method's statistics step takes its part.

    Attributes:
      classes: forget class ids, sorted and distinct (or None for example-level requests).
      usage: stored per-class histogram `[classes, codebooks, keys]`.
      codes: codes (indices, valid) `[n, codebooks, top_k]` of the forget examples, or of a
        pool of examples (e.g. the training set) whose forget rows `rows` names; computed on the
        model as trained (search mask cleared).
      forget_x: forget embeddings `[n, embed_dim]`, for a data pass when `codes` is None.
      label_stats: :class:`dkvb_jax.exact.LabelStats` of the model's closed-form values.
      rows: the forget rows of `codes` / `forget_x` when those hold a larger pool (UvE uses the
        first N_e of them in pool order); None: every row is a forget example.
      example_ids: ids of the forget examples, recorded in the audit; for exact removal, the
        ids of `label_stats` to remove.
      estimator: the :class:`dkvb_jax.exact.EstimatorConfig` the values of `label_stats` are
        derived with (exact removal); None: the exact API's default.
    """

    classes: tuple[int, ...] | None = None
    usage: jax.Array | None = None
    codes: tuple[jax.Array, jax.Array] | None = None
    forget_x: jax.Array | None = None
    label_stats: Any = None
    rows: np.ndarray | None = None
    example_ids: np.ndarray | None = None
    estimator: Any = None


SOURCES: tuple[str, ...] = ("usage", "forget_x", "label_stats")
"""What a statistics step can read (:attr:`UnlearningMethod.reads`), by :class:`ForgetData` field:
the stored histogram, the forget examples (or their ``codes``), the label statistics."""


@dataclasses.dataclass(frozen=True)
class Core:
    """A method's pure computation for one request, as a results table costs it.

    Attributes:
      fn: ``fn(*args) -> variables``, jittable: the edit, with any data pass that runs at
        unlearning time (not one done at training time, like the stored histogram).
      args: its arguments.
      flops_fn: a loop-free twin of `fn` (same arguments, same result) whose FLOPs are counted
        instead, since XLA's cost analysis counts a loop body once; None: `fn`'s own.
    """

    fn: Callable[..., Variables]
    args: tuple
    flops_fn: Callable[..., Variables] | None = None


@dataclasses.dataclass(frozen=True)
class UnlearningMethod:
    """One unlearning method.

    Attributes:
      name: registry key, e.g. ``'uva'``.
      label: display name in tables, plots and CLI output, e.g. ``'UvA'``.
      summary: one line on what it masks or edits.
      size: its size parameter, or None when it has none (exact removal).
      statistics: ``(model, variables, data: ForgetData) -> stats``; host-side, may run a
        data pass; raises :class:`~dkvb_jax.errors.InputError` when `data` lacks what it needs.
      select: ``(stats, n) -> bool [codebooks, keys]``, pure and jittable; None for a method
        that edits values rather than masking pairs.
      edit: ``(variables, stats, n, mode) -> variables``, pure and jittable.
      set_axes: ``stats -> in_axes`` pytree that vmaps `select`/`edit` over stacked forget sets
        (see :func:`stack_sets`).
      upper: ``(config, stats) -> int``, the largest valid `n`.
      lookup_depth: ``(config, stats, n) -> int``, nearest keys per codebook an evaluation must
        rank so that every input's fallback key is among them at size `n`
        (:mod:`dkvb_jax.unlearning.fast_eval`).
      exact: True when the result can be certified equal to refitting without the forget data
        (given provenance); masking methods never are.
      requests: what it can forget: ``'classes'``, ``'examples'`` or both.
      reads: the :class:`ForgetData` source its statistics step needs (one of :data:`SOURCES`):
        ``'usage'``, ``'forget_x'`` (or ``codes``) or ``'label_stats'``; a caller holding several
        (the experiment pipeline) builds that one, and a method reading ``'label_stats'``
        starts from the closed-form values those statistics describe.
      core: ``(method, model, variables, data, n, mode) -> Core``, the computation a results
        table times and counts FLOPs of (see :func:`costed_core`); None: `edit` on the
        statistics. It receives the method itself, so that a method derived with
        ``dataclasses.replace`` costs its own `edit`.
      restrict: ``(data, n) -> data``, the part of a request that size `n` reads (UvE: its first
        `n` forget examples), so that no more is coded than is used; None: all of it.
    """

    name: str
    label: str
    summary: str
    size: SizeParam | None
    statistics: Callable[[DKVB, Variables, ForgetData], Stats]
    select: Callable[[Stats, Any], jax.Array] | None
    edit: Callable[[Variables, Stats, Any, str], Variables]
    set_axes: Callable[[Stats], Any]
    upper: Callable[[Any, Stats], int]
    lookup_depth: Callable[[Any, Stats, int], int] | None
    exact: bool = False
    requests: tuple[str, ...] = ("classes", "examples")
    reads: str = "usage"
    core: Callable[..., Core] | None = None
    restrict: Callable[[ForgetData, Any], ForgetData] | None = None

    def __post_init__(self):
        if self.reads not in SOURCES:
            raise ValueError(
                f"UnlearningMethod({self.name!r}).reads must be one of {SOURCES}, got {self.reads!r}."
            )


def masking_edit(select: Callable[[Stats, Any], jax.Array]):
    """The `edit` of a masking method: apply its selection under the given mask mode."""

    def edit(variables: Variables, stats: Stats, n, mode: str = "search") -> Variables:
        return masking.apply_selection(variables, select(stats, n), mode)

    return edit


def restricted(method: UnlearningMethod, data: ForgetData, n) -> ForgetData:
    """`data` cut to what `method` reads at size `n` (unchanged without a `restrict`)."""
    return data if method.restrict is None else method.restrict(data, n)


def costed_core(
    method: UnlearningMethod, model: DKVB, variables: Variables, data: ForgetData, n, mode: str
) -> Core:
    """The computation of unlearning `data` at size `n` that a results table costs.

    The method's own `core` when it has one (a data pass at unlearning time, a loop-free twin for
    FLOPs); otherwise its `edit` on the statistics, which were gathered before (a stored
    histogram, label counts) and so are not part of the cost.
    """
    if method.core is not None:
        return method.core(method, model, variables, data, n, mode)
    stats = method.statistics(model, variables, data)
    return Core(functools.partial(method.edit, n=n, mode=mode), (variables, stats))


def stack_sets(method: UnlearningMethod, per_set: list[Stats]) -> Stats:
    """Stacks the statistics of several forget sets along the axes `method.set_axes` marks.

    Parts not marked (axis None, e.g. the histogram every set shares) are taken from the first.
    """

    def stack(axis, *parts):
        if axis is None:
            return parts[0]
        return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs], axis), *parts)

    axes = method.set_axes(per_set[0])
    return jax.tree.map(stack, axes, *per_set, is_leaf=lambda x: x is None)


def select_over_sets(method: UnlearningMethod, stacked: Stats, n) -> jax.Array:
    """`method.select` for every stacked forget set: bool `[sets, codebooks, keys]`."""
    if method.select is None:
        raise ValueError(f"{method.name} edits values; it has no pair selection.")
    return jax.vmap(method.select, in_axes=(method.set_axes(stacked), None))(stacked, n)
