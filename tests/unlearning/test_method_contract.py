"""One contract over every registered unlearning method (in the spirit of optax's tests).

Each method, given the statistics of a forget request on a small clustered model, must be pure,
leave every leaf it does not own bit-identical, be idempotent, give the same result jitted and
eager, vmap over its size and over forget sets exactly as a loop does, round-trip its audit
record through JSON, and forget a class whose data sits in its own clusters; its declared source
(`reads`) must be all its statistics need, its costed core (and that core's loop-free FLOPs twin)
must compute its edit, and the part of a request it reads (`restrict`) must give the same edit.
"""

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax import exact
from dkvb_jax.unlearning import (
    METHODS,
    AuditRecord,
    ForgetData,
    masking_methods,
    stack_sets,
    unlearn,
)
from dkvb_jax.unlearning.spec import costed_core, restricted, select_over_sets

FORGET, OTHER = 2, 4
SETS = (2, 4)  # forget sets for the vmap-over-sets check: class 2 alone, class 4 alone


@pytest.fixture(scope="module")
def problem(trained):
    """The trained model, with closed-form values and statistics for the exact method."""
    model = trained.model
    v_exact, label_stats = exact.fit_exact(model, trained.v, trained.codes, trained.y)
    return trained, jax.tree.map(np.asarray, v_exact), label_stats


def _variables(method, problem):
    trained, v_exact, _ = problem
    return v_exact if method.exact else trained.v


def _data(method, problem, cls):
    """Class `cls` as a request: the histogram, the training codes and rows, the statistics."""
    trained, _, label_stats = problem
    rows = None if method.exact else np.flatnonzero(trained.y == cls)
    return ForgetData(
        classes=(cls,), usage=trained.usage, codes=trained.codes, rows=rows, label_stats=label_stats
    )


def _size(method, model, stats):
    if method.size is None:
        return None
    return min(
        method.size.default_grid[len(method.size.default_grid) // 2],
        method.upper(model.config, stats),
    )


def _setup(name, problem, cls=FORGET):
    method = METHODS[name]
    model = problem[0].model
    variables = _variables(method, problem)
    stats = method.statistics(model, variables, _data(method, problem, cls))
    return method, model, variables, stats, _size(method, model, stats)


def _same(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
README_METHOD = "uva_purity"  # registered by the README's "Extending dkvb_jax" example


@pytest.fixture(scope="module", autouse=True)
def readme_method():
    """Runs the README's method example, so the contract covers it too; unregisters it after."""
    section = README.read_text().split("## Extending dkvb_jax", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    yield
    METHODS.pop(README_METHOD)


names = pytest.mark.parametrize("name", [*sorted(METHODS), README_METHOD])


@names
def test_pure_and_untouched_leaves_bit_identical(name, problem):
    method, model, variables, stats, n = _setup(name, problem)
    before = jax.tree.map(np.copy, variables)
    new = method.edit(variables, stats, n, "search")
    assert _same(variables, before), "the input variables were modified"
    owned = {"params/values"} if method.exact else {"mask/search"}
    flat_new = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(new)}
    for path, x in jax.tree_util.tree_leaves_with_path(variables):
        key = jax.tree_util.keystr(path)
        if not any(all(part in key for part in o.split("/")) for o in owned):
            np.testing.assert_array_equal(flat_new[key], x, err_msg=key)


@names
def test_idempotent(name, problem):
    method, model, variables, stats, n = _setup(name, problem)
    once = method.edit(variables, stats, n, "search")
    assert _same(method.edit(once, stats, n, "search"), once)


@names
def test_jit_equals_eager(name, problem):
    method, model, variables, stats, n = _setup(name, problem)
    eager = method.edit(variables, stats, n, "search")
    jitted = jax.jit(method.edit, static_argnums=3)(variables, stats, n, "search")
    assert _same(eager, jitted)


@pytest.mark.parametrize("name", [*masking_methods(), README_METHOD])
def test_vmap_over_sizes_equals_loop(name, problem):
    method, model, variables, stats, n = _setup(name, problem)
    grid = [g for g in method.size.default_grid if g <= method.upper(model.config, stats)][:3]
    swept = jax.vmap(method.select, in_axes=(None, 0))(stats, jnp.asarray(grid))
    for i, g in enumerate(grid):
        np.testing.assert_array_equal(swept[i], method.select(stats, g))


@names
def test_vmap_over_forget_sets_equals_loop(name, problem):
    method = METHODS[name]
    model = problem[0].model
    variables = _variables(method, problem)
    per_set = [method.statistics(model, variables, _data(method, problem, c)) for c in SETS]
    n = min(_size(method, model, s) or 0 for s in per_set) or None
    stacked = stack_sets(method, per_set)
    if method.select is not None:
        batched = select_over_sets(method, stacked, n)
        for i, s in enumerate(per_set):
            np.testing.assert_array_equal(batched[i], method.select(s, n))
    else:
        edit = jax.vmap(method.edit, in_axes=(None, method.set_axes(stacked), None, None))
        batched = edit(variables, stacked, n, "search")
        for i, s in enumerate(per_set):
            single = method.edit(variables, s, n, "search")
            assert _same(jax.tree.map(lambda x, i=i: x[i], batched), single)


@names
def test_audit_record_round_trips(name, problem):
    method, model, variables, stats, n = _setup(name, problem)
    new, record = unlearn(name, model, variables, _data(method, problem, FORGET), n)
    assert AuditRecord.from_json(record.to_json()) == record
    assert record.forgotten_classes == [FORGET]
    assert record.certified is False or method.exact


@names
def test_forgets_a_clustered_class(name, problem):
    trained = problem[0]
    method, model, variables, stats, _ = _setup(name, problem)
    upper = method.upper(model.config, stats) if method.size else None
    n = None if method.size is None else max(g for g in method.size.default_grid if g <= upper)
    new = method.edit(variables, stats, n, "search")
    pred = np.asarray(model.apply(new, trained.xt).argmax(-1))
    forget = trained.yt == FORGET
    assert (pred[forget] == FORGET).mean() <= 0.05
    assert (pred[~forget] == trained.yt[~forget]).mean() >= 0.9


def test_registry_refuses_a_taken_name():
    from dkvb_jax.unlearning import register_method

    with pytest.raises(ValueError, match="already registered"):
        register_method(dataclasses.replace(METHODS["uva"]))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("uva", lambda t: {"usage": t.usage, "classes": (FORGET,)}),
        ("uva_pass", lambda t: {"forget_x": t.x[t.y == FORGET], "classes": (FORGET,)}),
    ],
)
def test_named_wrapper_runs_the_registered_spec(name, kwargs, problem):
    """unlearn_via_activations' two sources are the two UvA specs, pair for pair."""
    from dkvb_jax.unlearning import unlearn_via_activations

    trained = problem[0]
    method, model, variables, stats, n = _setup(name, problem)
    new, record = unlearn_via_activations(model, variables, n, **kwargs(trained))
    assert record.method == name
    np.testing.assert_array_equal(
        new["mask"]["search"], method.edit(variables, stats, n)["mask"]["search"]
    )


def test_unlearn_refuses_a_size_for_a_method_without_one(problem):
    from dkvb_jax.errors import InputError

    method, model, variables, stats, _ = _setup("exact", problem)
    with pytest.raises(InputError, match="has no size parameter"):
        unlearn("exact", model, variables, _data(method, problem, FORGET), 8)


def _from_source(method, problem, cls=FORGET):
    """Class `cls` as a request holding only the source the method says it reads."""
    trained, _, label_stats = problem
    source = {
        "usage": trained.usage,
        "forget_x": trained.x[trained.y == cls],
        "label_stats": label_stats,
    }[method.reads]
    return ForgetData(classes=(cls,), **{method.reads: source})


@names
def test_reads_names_all_its_statistics_need(name, problem):
    """A request holding only the declared source gives the edit of the full request."""
    method, model, variables, stats, n = _setup(name, problem)
    alone = method.statistics(model, variables, _from_source(method, problem))
    assert _same(method.edit(variables, alone, n, "search"), method.edit(variables, stats, n))


@names
def test_costed_core_and_its_flops_twin_compute_the_edit(name, problem):
    """What a results table costs is the method's own edit (with any data pass it needs), and
    the loop-free twin whose FLOPs are counted computes the same thing."""
    method, model, variables, stats, n = _setup(name, problem)
    data = _from_source(method, problem)
    expected = method.edit(variables, method.statistics(model, variables, data), n, "search")
    core = costed_core(method, model, variables, data, n, "search")
    for fn in (core.fn, core.flops_fn or core.fn):
        assert _same(jax.jit(fn)(*core.args), expected)


@names
def test_restrict_keeps_the_edit(name, problem):
    """The part of a request a size reads gives the edit of the whole request."""
    method, model, variables, stats, n = _setup(name, problem)
    data = _from_source(method, problem)
    part = method.statistics(model, variables, restricted(method, data, n))
    whole = method.statistics(model, variables, data)
    assert _same(method.edit(variables, part, n, "search"), method.edit(variables, whole, n))


def test_uve_reads_and_costs_only_its_first_examples(problem):
    """UvE codes no more forget examples than its size uses, and its costed core is the codes
    pass over exactly those rows (the pass is part of its cost)."""
    trained = problem[0]
    method, model = METHODS["uve"], trained.model
    data = _from_source(method, problem)
    assert restricted(method, data, 7).forget_x.shape[0] == 7
    core = costed_core(method, model, trained.v, data, 7, "search")
    assert core.args[1].shape[0] == 7


def test_unlearn_exact_derives_values_with_the_requests_estimator(problem):
    trained, v_exact, label_stats = problem
    est = exact.EstimatorConfig(alpha=0.25)
    data = ForgetData(classes=(FORGET,), label_stats=label_stats, estimator=est)
    new, _ = unlearn("exact", trained.model, v_exact, data)
    want, _, _ = exact.remove_classes(v_exact, label_stats, FORGET, estimator=est)
    np.testing.assert_array_equal(new["params"]["values"], want["params"]["values"])
    default, _ = unlearn("exact", trained.model, v_exact, dataclasses.replace(data, estimator=None))
    assert not np.array_equal(default["params"]["values"], want["params"]["values"])


def test_a_method_must_read_a_known_source():
    with pytest.raises(ValueError, match="reads must be one of"):
        dataclasses.replace(METHODS["uva"], name="bogus", reads="histogram")


def test_costed_flops_are_the_cores_the_results_tables_count(problem):
    """The FLOPs a results table reports: UvA's loop-free top-N over the stored histogram (the
    histogram came with training), UvE's codes pass over its first N_e examples (dense lookup)
    and every pair they retrieve, exact removal's count subtraction."""
    from dkvb_jax.evaluation import compile_with_flops, dense_lookup_model
    from dkvb_jax.model import DKVB
    from dkvb_jax.unlearning import apply_selection, clear_masks
    from dkvb_jax.unlearning.selection import codes_selection, mask_top_n_per_class

    trained, v_exact, label_stats = problem
    model, v = trained.model, trained.v
    dense, keys = dense_lookup_model(model), model.config.num_keys
    forget = jnp.zeros(model.config.num_classes, bool).at[FORGET].set(True)

    def uva(v, usage):
        return apply_selection(v, mask_top_n_per_class(usage, forget, 8, loop_free=True))

    def uve(v, x):
        idx, valid = dense.apply(clear_masks(v, ("search",)), x, method=DKVB.codes)
        return apply_selection(v, codes_selection(idx, valid, keys))

    def exact_core(stats, rows):
        return exact.values_without(stats, rows, exact.EstimatorConfig())[0]

    rows = jnp.asarray(np.isin(np.asarray(label_stats.labels), [FORGET]))
    x = jnp.asarray(trained.x[trained.y == FORGET][:7])
    for name, n, reference, args in [
        ("uva", 8, uva, (v, jnp.asarray(trained.usage))),
        ("uve", 7, uve, (v, x)),
        ("exact", None, exact_core, (label_stats, rows)),
    ]:
        method = METHODS[name]
        variables = v_exact if method.exact else v
        core = costed_core(method, model, variables, _from_source(method, problem), n, "search")
        counted = compile_with_flops(core.flops_fn or core.fn, *core.args)[1]
        assert counted == compile_with_flops(reference, *args)[1], name
