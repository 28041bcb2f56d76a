"""Unlearning methods on a trained model where each class owns distinct clusters."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from unlearning_testutil import accuracy, predictions

from dkvb_jax import DKVB
from dkvb_jax.unlearning import (
    METHODS,
    AuditRecord,
    ForgetData,
    RetainAware,
    accuracy_effect,
    clear_masks,
    every_class_metrics,
    forget_classes,
    forget_examples,
    masked_pairs,
    masking_methods,
    ranked_codes,
    unlearn,
    unlearn_every_class,
    unlearn_via_activations,
    unlearn_via_examples,
    uva_metrics,
    variables_hash,
)

N_ALL = 64  # every key a class uses: a guaranteed forget accuracy of 0 on this data


def _leaves(v):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(v)
    }


def _assert_only_masks_changed(before, after):
    b, a = _leaves(before), _leaves(after)
    assert b.keys() == a.keys()
    for path in b:
        if not path.startswith("['mask']"):
            np.testing.assert_array_equal(a[path], b[path], err_msg=path)


# Readout masking zeroes the class's values, so its inputs get all-zero logits and argmax
# picks class 0: forgetting class 0 in readout mode is not measurable by accuracy.
@pytest.mark.parametrize("mode,cls", [("search", 0), ("search", 3), ("readout", 2)])
def test_forgetting_a_class_zeroes_it_and_spares_the_others(trained, mode, cls):
    t = trained
    h = variables_hash(t.v)
    new, rec = forget_classes(t.model, t.v, cls, N_ALL, usage=t.usage, mode=mode)
    assert variables_hash(t.v) == h  # input untouched
    _assert_only_masks_changed(t.v, new)
    assert accuracy(t.model, new, t.xt, t.yt, t.yt == cls) == 0.0
    keep = t.yt != cls
    np.testing.assert_array_equal(
        predictions(t.model, new, t.xt[keep]), predictions(t.model, t.v, t.xt[keep])
    )
    assert rec.method == "forget_classes" and rec.forgotten_classes == [cls]
    assert rec.pairs_masked == masked_pairs(new).sum(-1).tolist()
    assert rec.hash_before == h and rec.hash_after == variables_hash(new)


@pytest.mark.parametrize("n_a", [4, 16])
def test_uva_from_histogram_equals_data_pass(trained, n_a):
    t = trained
    a, _ = unlearn_via_activations(t.model, t.v, n_a, usage=t.usage, classes=[2])
    b, _ = unlearn_via_activations(t.model, t.v, n_a, forget_x=t.x[t.y == 2])
    assert variables_hash(a) == variables_hash(b)


@pytest.mark.parametrize(
    "call",
    [
        lambda t, v: unlearn_via_activations(t.model, v, 8, forget_x=t.x[t.y == 1]),
        lambda t, v: unlearn_via_activations(t.model, v, 8, usage=t.usage, classes=[1, 4]),
        lambda t, v: unlearn_via_examples(t.model, v, t.x[t.y == 1], n_e=10, mode="readout"),
        lambda t, v: forget_examples(t.model, v, [3, 5, 8], codes=t.codes),
        lambda t, v: forget_classes(
            t.model, v, 1, 8, usage=t.usage, hard=True, rekey="random", rng=jax.random.key(0)
        ),
    ],
    ids=["uva-data", "uva-histogram", "uve-readout", "examples", "hard-random"],
)
def test_same_request_twice_changes_nothing_the_second_time(trained, call):
    once, rec1 = call(trained, trained.v)
    twice, rec2 = call(trained, once)
    assert rec1.changed and sum(rec1.pairs_masked) > 0
    assert not rec2.changed and sum(rec2.pairs_masked) == 0
    assert variables_hash(twice) == variables_hash(once)


def test_sequential_requests_accumulate_to_the_joint_request(trained):
    t = trained
    one, _ = forget_classes(t.model, t.v, 1, 8, usage=t.usage)
    seq, rec = forget_classes(t.model, one, 3, 8, usage=t.usage)
    joint, _ = forget_classes(t.model, t.v, [1, 3], 8, usage=t.usage)
    assert variables_hash(seq) == variables_hash(joint)
    assert rec.total_masked == masked_pairs(joint).sum(-1).tolist()
    assert np.all(np.asarray(masked_pairs(one)) <= np.asarray(masked_pairs(seq)))


def test_several_classes_at_once(trained):
    t = trained
    new, rec = forget_classes(t.model, t.v, [1, 3], N_ALL, usage=t.usage)
    forget = np.isin(t.yt, [1, 3])
    assert accuracy(t.model, new, t.xt, t.yt, forget) == 0.0
    assert accuracy(t.model, new, t.xt, t.yt, ~forget) == accuracy(
        t.model, t.v, t.xt, t.yt, ~forget
    )
    assert rec.forgotten_classes == [1, 3]


# n = 8 evaluates from one shallow ranking, n = 40 searches each variant directly; a tiny
# budget evaluates one row per batch.
@pytest.mark.parametrize(("n", "memory_mb"), [(8, 512.0), (8, 1e-6), (40, 512.0)])
def test_vmap_over_classes_equals_python_loop(trained, n, memory_mb):
    t = trained
    stacked = unlearn_every_class(t.v, t.usage, n)
    f, r = every_class_metrics(t.model, t.v, t.usage, n, t.xt, t.yt, memory_mb=memory_mb)
    for c in range(t.model.config.num_classes):
        one, _ = forget_classes(t.model, t.v, c, n, usage=t.usage)
        assert variables_hash(jax.tree.map(lambda a, c=c: a[c], stacked)) == variables_hash(one)
        # The gather-based metrics equal a fresh nearest-key search through the full model.
        assert f[c] == pytest.approx(accuracy(t.model, one, t.xt, t.yt, t.yt == c))
        assert r[c] == pytest.approx(accuracy(t.model, one, t.xt, t.yt, t.yt != c))


@pytest.mark.parametrize("jit", [True, False])
def test_uva_metrics_jit_equals_no_jit(trained, jit):
    t = trained
    ranked = ranked_codes(t.model, t.v, t.xt, 8 + 1)
    forget = np.arange(5) == 2
    args = (t.model, t.v, t.usage, forget, 8, *ranked, t.yt, "search")
    with jax.disable_jit(not jit):
        f, r = uva_metrics(*args)
    one, _ = forget_classes(t.model, t.v, 2, 8, usage=t.usage)
    assert float(f) == pytest.approx(accuracy(t.model, one, t.xt, t.yt, t.yt == 2))
    assert float(r) == pytest.approx(accuracy(t.model, one, t.xt, t.yt, t.yt != 2))


def test_audit_record_json_round_trip_with_effect(trained):
    t = trained
    eff = accuracy_effect(t.model, t.xt, t.yt, [4])
    _, rec = forget_classes(
        t.model, t.v, 4, N_ALL, usage=t.usage, eval_fn=eff, retain_aware=RetainAware(ratio=2.0)
    )
    text = rec.to_json()
    json.loads(text)  # plain JSON
    assert AuditRecord.from_json(text) == rec
    assert rec.effect["before"]["forget_accuracy"] == 1.0
    assert rec.effect["after"]["forget_accuracy"] == 0.0
    assert rec.params["retain_ratio"] == 2.0 and len(rec.pairs_spared) == 16


def test_variables_hash_ignores_dict_order(trained):
    v = trained.v
    reordered = {k: dict(reversed(list(v[k].items()))) for k in reversed(list(v))}
    assert variables_hash(reordered) == variables_hash(v)


@pytest.mark.parametrize("cls", [1, 4])
@pytest.mark.parametrize("rekey", [None, "far", "random"])
def test_unmasking_restores_soft_but_not_hard_deletion(trained, cls, rekey):
    t = trained
    rows = t.yt == cls
    soft, _ = forget_classes(t.model, t.v, cls, N_ALL, usage=t.usage)
    hard, rec = forget_classes(
        t.model, t.v, cls, N_ALL, usage=t.usage, hard=True, rekey=rekey, rng=jax.random.key(3)
    )
    assert rec.params["hard"] and rec.params["rekey"] == rekey
    assert (
        accuracy(t.model, soft, t.xt, t.yt, rows) == accuracy(t.model, hard, t.xt, t.yt, rows) == 0
    )
    assert accuracy(t.model, clear_masks(soft), t.xt, t.yt, rows) == 1.0
    assert accuracy(t.model, clear_masks(hard), t.xt, t.yt, rows) == 0.0


def test_sample_level_forgetting_masks_every_pair_of_the_examples(trained):
    t = trained
    ids = np.flatnonzero(t.y == 2)[:15]
    new, rec = forget_examples(t.model, t.v, ids, codes=t.codes)
    by_x, _ = forget_examples(t.model, t.v, ids, x=t.x)
    assert variables_hash(by_x) == variables_hash(new)
    assert rec.forgotten_examples == sorted(ids.tolist()) and rec.method == "forget_examples"
    old_idx = np.asarray(t.codes[0])[ids]
    new_idx, _ = t.model.apply(new, t.x[ids], method=DKVB.codes)
    # No forgotten example retrieves any pair it used before, in any codebook.
    assert not (np.asarray(new_idx)[..., 0] == old_idx[..., 0]).any()
    other = t.yt != 2
    assert (
        accuracy(t.model, new, t.xt, t.yt, other)
        >= accuracy(t.model, t.v, t.xt, t.yt, other) - 0.01
    )


@pytest.mark.parametrize("ratio", [1.0, 4.0])
def test_retain_aware_selection_spares_keys_and_reports_how_many(trained, ratio):
    t = trained
    plain, rec0 = forget_classes(t.model, t.v, 0, N_ALL, usage=t.usage)
    aware, rec = forget_classes(
        t.model, t.v, 0, N_ALL, usage=t.usage, retain_aware=RetainAware(ratio=ratio)
    )
    assert rec0.pairs_spared is None
    assert sum(rec.pairs_spared) > 0
    np.testing.assert_array_equal(
        np.asarray(rec.pairs_masked) + np.asarray(rec.pairs_spared), rec0.pairs_masked
    )
    assert np.all(np.asarray(masked_pairs(aware)) <= np.asarray(masked_pairs(plain)))
    # Spared keys are the ones retain data uses more; on this data that never costs retain
    # accuracy (not a general guarantee: a spared key can also vote for the forget class).
    keep = t.yt != 0
    assert accuracy(t.model, aware, t.xt, t.yt, keep) >= accuracy(t.model, plain, t.xt, t.yt, keep)


@pytest.mark.parametrize("name", masking_methods())
def test_every_class_metrics_of_each_method_equal_a_loop_of_unlearn(trained, name):
    """Every registered masking method, each class forgotten alone: the vmapped evaluation equals
    unlearning that class through the library call and a fresh search of the full model."""
    t = trained
    method = METHODS[name]
    pool = ForgetData(usage=t.usage, codes=t.codes)
    f, r = every_class_metrics(t.model, t.v, pool, 8, t.xt, t.yt, method=name, pool_labels=t.y)
    for c in range(t.model.config.num_classes):
        rows = None if method.reads == "usage" else np.flatnonzero(t.y == c)
        request = dataclasses.replace(pool, classes=(c,), rows=rows)
        one, _ = unlearn(name, t.model, t.v, request, 8)
        assert f[c] == pytest.approx(accuracy(t.model, one, t.xt, t.yt, t.yt == c))
        assert r[c] == pytest.approx(accuracy(t.model, one, t.xt, t.yt, t.yt != c))


def test_every_class_metrics_refuses_a_method_without_a_selection(trained):
    t = trained
    with pytest.raises(ValueError, match="evaluates masking methods"):
        every_class_metrics(t.model, t.v, t.usage, 8, t.xt, t.yt, method="exact")
