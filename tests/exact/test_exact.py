"""Exact unlearning: removal equals refitting, bit for bit, on random codes and embeddings."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax.config import DKVBConfig
from dkvb_jax.exact import (
    EstimatorConfig,
    StatsConfig,
    add_examples,
    counts_from_codes,
    derive_values,
    fit_exact,
    remove_classes,
    remove_examples,
    values_without,
)
from dkvb_jax.model import DKVB
from dkvb_jax.provenance import Part, Provenance, Rows
from dkvb_jax.training import compute_codes
from dkvb_jax.unlearning.audit import AuditRecord

C, K, Y, TOPK, D = 4, 8, 3, 2, 16
# Every frozen part fitted on no data of "toy/train": every removal is certified.
CLEAN = Provenance(
    "toy/train",
    (
        Part("encoder", "identity", ()),
        Part("preprocess", "none", ()),
        Part("keys", "ema_kmeans", (Rows("other/train"),)),
        Part("values", "adam", (Rows("toy/train", labels=True),)),
    ),
)
ESTIMATORS = [
    EstimatorConfig(),
    EstimatorConfig(kind="centered_log_prob", alpha=0.5),
    EstimatorConfig(kind="prob", alpha=2.0, temperature=0.5),
    EstimatorConfig(prior_correction=True, codebook_weighting="information"),
    EstimatorConfig(kind="centered_log_prob", prior_correction=True, absent_class_value=None),
]


@pytest.fixture(scope="module")
def model_and_vars():
    model = DKVB(
        DKVBConfig(embed_dim=D, num_classes=Y, num_codebooks=C, num_keys=K, key_dim=3, top_k=TOPK)
    )
    return model, model.init(jax.random.key(0), jnp.zeros((2, D)))


def random_data(seed, n=60, invalid=0.1):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, K, (n, C, TOPK)).astype(np.int32)
    codes[rng.random(codes.shape) < invalid] = -1
    labels = rng.integers(0, Y, n).astype(np.int32)
    ids = rng.permutation(10 * n)[:n]
    return codes, labels, ids


def bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def assert_stats_equal(s1, s2):
    for name in ("counts", "codes", "labels", "ids", "rank_weights"):
        assert bitwise_equal(getattr(s1, name), getattr(s2, name)), name


# ------------------------------------------------------------------ estimator vs NumPy


def numpy_counts(codes, labels, rank_weights):
    out = np.zeros((C, K, Y), np.int64)
    for i in range(codes.shape[0]):
        for c in range(C):
            for r in range(TOPK):
                if codes[i, c, r] >= 0:
                    out[c, codes[i, c, r], labels[i]] += rank_weights[r]
    return out


def numpy_values(n, cfg):
    n = n.astype(np.float64)
    a = cfg.alpha
    n_k = n.sum(-1, keepdims=True)
    present = n.sum((0, 1)) > 0
    if cfg.kind == "prob":
        v = (n + a) / (n_k + a * Y)
    else:
        v = np.log((n + a) / (n_k + a * Y))
        if cfg.prior_correction:
            n_y = n.sum(1, keepdims=True)
            v -= np.log((n_y + a) / (n_y.sum(-1, keepdims=True) + a * Y))
        if cfg.kind == "centered_log_prob":
            v = np.where(n_k > 0, v - v[..., present].mean(-1, keepdims=True), 0.0)
    if cfg.codebook_weighting == "information":
        p = n / n.sum((1, 2), keepdims=True)
        pk, py = p.sum(2, keepdims=True), p.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            info = np.nansum(np.where(p > 0, p * np.log(p / (pk * py)), 0.0), axis=(1, 2))
        v = v * (info / info.mean())[:, None, None]
    v = v / cfg.temperature
    if cfg.absent_class_value is not None:
        v = np.where(present, v, cfg.absent_class_value)
    return v


@pytest.mark.parametrize("rank_weights", [None, (3, 1)])
def test_counts_match_numpy(rank_weights):
    codes, labels, _ = random_data(1)
    w = StatsConfig(rank_weights=rank_weights).weights_for(TOPK)
    got = counts_from_codes(jnp.asarray(codes), jnp.asarray(labels), K, Y, w)
    np.testing.assert_array_equal(got, numpy_counts(codes, labels, np.asarray(w)))
    assert got.dtype == jnp.int32


@pytest.mark.parametrize("cfg", ESTIMATORS, ids=lambda c: f"{c.kind}-{c.codebook_weighting}")
@pytest.mark.parametrize("drop_class", [False, True])
def test_values_match_numpy_formula(cfg, drop_class):
    codes, labels, _ = random_data(2, n=200, invalid=0.0)
    if drop_class:  # a class with no example exercises the absent-class rule
        labels = np.where(labels == 1, 0, labels)
    counts = numpy_counts(codes, labels, np.ones(TOPK, int))
    got = np.asarray(derive_values(jnp.asarray(counts, jnp.int32), cfg))
    np.testing.assert_allclose(got, numpy_values(counts, cfg), rtol=2e-5, atol=2e-5)
    assert np.isfinite(got).all()


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("cfg", ESTIMATORS[:4], ids=lambda c: f"{c.kind}-{c.codebook_weighting}")
@pytest.mark.parametrize("seed, rank_weights", [(0, None), (1, None), (2, (2, 1))])
def test_remove_examples_equals_refit(model_and_vars, cfg, seed, rank_weights):
    model, v = model_and_vars
    sc = StatsConfig(rank_weights=rank_weights)
    codes, labels, ids = random_data(seed)
    rng = np.random.default_rng(100 + seed)
    forget = rng.random(ids.size) < rng.uniform(0.05, 0.6)
    forget[0] = True
    v_all, s_all = fit_exact(
        model, v, codes, labels, ids, estimator=cfg, stats_config=sc, provenance=CLEAN
    )
    v_un, s_un, rec = remove_examples(v_all, s_all, rng.permutation(ids[forget]), estimator=cfg)
    v_ref, s_ref = fit_exact(
        model,
        v,
        codes[~forget],
        labels[~forget],
        ids[~forget],
        estimator=cfg,
        stats_config=sc,
        provenance=CLEAN,
    )
    assert bitwise_equal(v_un["params"]["values"], v_ref["params"]["values"])
    assert_stats_equal(s_un, s_ref)
    assert rec.certified and rec.params["num_examples"] == forget.sum()


@pytest.mark.parametrize("classes", [0, [2], [0, 1]])
def test_remove_classes_equals_refit_and_never_predicts_them(model_and_vars, classes):
    model, v = model_and_vars
    codes, labels, ids = random_data(5, n=120)
    v_all, s_all = fit_exact(model, v, codes, labels, ids, provenance=CLEAN)
    v_un, s_un, rec = remove_classes(v_all, s_all, classes)
    keep = ~np.isin(labels, classes)
    v_ref, s_ref = fit_exact(model, v, codes[keep], labels[keep], ids[keep], provenance=CLEAN)
    assert bitwise_equal(v_un["params"]["values"], v_ref["params"]["values"])
    assert_stats_equal(s_un, s_ref)
    assert rec.forgotten_classes == np.atleast_1d(classes).tolist()
    assert rec.method == "exact_forget_classes" and sum(rec.pairs_masked) == 0
    pred = model.apply(v_un, jnp.asarray(codes), codes >= 0, method=DKVB.decode_codes).argmax(-1)
    assert not np.isin(np.asarray(pred), classes).any()


def test_embeddings_path_matches_codes_and_removal_needs_no_encoder(model_and_vars):
    model, v = model_and_vars
    x = np.random.default_rng(0).normal(size=(50, D)).astype(np.float32)
    y = np.arange(50, dtype=np.int32) % Y
    v1, s1 = fit_exact(model, v, x, y)
    v2, s2 = fit_exact(model, v, compute_codes(model, v, x), y)
    assert bitwise_equal(v1["params"]["values"], v2["params"]["values"])
    v3, _, _ = remove_examples(v1, s1, [3, 7])  # ids default to row numbers
    keep = ~np.isin(np.arange(50), [3, 7])
    v4, _ = fit_exact(model, v, x[keep], y[keep], np.flatnonzero(keep))
    assert bitwise_equal(v3["params"]["values"], v4["params"]["values"])


def test_only_values_change_and_input_untouched(model_and_vars):
    model, v = model_and_vars
    codes, labels, ids = random_data(6)
    v_all, s_all = fit_exact(model, v, codes, labels, ids)
    before = jax.tree.map(np.array, v_all)
    v_un, _, _ = remove_examples(v_all, s_all, ids[:5])
    chex.assert_trees_all_equal(jax.tree.map(np.array, v_all), before)
    for col in ("frozen", "mask"):
        chex.assert_trees_all_equal(v_un[col], v[col])
    assert not bitwise_equal(v_un["params"]["values"], v_all["params"]["values"])


def test_add_then_remove_is_identity(model_and_vars):
    model, v = model_and_vars
    codes, labels, ids = random_data(7, n=80)
    v0, s0 = fit_exact(model, v, codes[:50], labels[:50], ids[:50])
    v1, s1, rec = add_examples(model, v0, s0, codes[50:], labels[50:], ids[50:])
    v_ref, s_ref = fit_exact(model, v, codes, labels, ids)
    assert bitwise_equal(v1["params"]["values"], v_ref["params"]["values"])
    assert_stats_equal(s1, s_ref)
    v2, s2, _ = remove_examples(v1, s1, ids[50:])
    assert bitwise_equal(v2["params"]["values"], v0["params"]["values"])
    assert_stats_equal(s2, s0)
    assert rec.method == "exact_add"


def test_sequential_requests_equal_one_union_request(model_and_vars):
    model, v = model_and_vars
    codes, labels, ids = random_data(8, n=400)
    v0, s0 = fit_exact(model, v, codes, labels, ids)
    rng = np.random.default_rng(8)
    requests = np.array_split(rng.permutation(ids)[:300], 100)
    v_seq, s_seq = v0, s0
    for req in requests:
        v_seq, s_seq, _ = remove_examples(v_seq, s_seq, req)
    v_union, s_union, _ = remove_examples(v0, s0, np.concatenate(requests))
    assert bitwise_equal(v_seq["params"]["values"], v_union["params"]["values"])
    assert_stats_equal(s_seq, s_union)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("twice", [False, True])
def test_removing_uncounted_ids_is_an_error_naming_them(model_and_vars, twice):
    model, v = model_and_vars
    codes, labels, ids = random_data(9)
    v0, s0 = fit_exact(model, v, codes, labels, ids)
    if twice:
        v0, s0, _ = remove_examples(v0, s0, ids[:2])
        bad = [int(ids[1])]
    else:
        bad = [int(ids.max()) + 1, int(ids.max()) + 7]
    with pytest.raises(ValueError, match=rf"ids {bad[0]}.*not counted"):
        remove_examples(v0, s0, [int(ids[5]), *bad])
    assert int(np.asarray(s0.counts).min()) >= 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda v, s: remove_examples(v, s, []), "empty"),
        (lambda v, s: remove_classes(v, s, [0, 1, 2]), "all 3 classes"),
        (lambda v, s: remove_classes(v, s, 5), r"\[0, 3\)"),
        (lambda v, s: add_examples(None, v, s, s.codes[:1], s.labels[:1], s.ids[:1]), None),
    ],
)
def test_bad_requests(model_and_vars, call, match):
    model, v = model_and_vars
    codes, labels, ids = random_data(10)
    v0, s0 = fit_exact(model, v, codes, labels, ids)
    if match is None:  # adding an id that is already counted
        with pytest.raises(ValueError, match="already counted"):
            add_examples(model, v0, s0, codes[:1], labels[:1], ids[:1])
        return
    with pytest.raises(ValueError, match=match):
        call(v0, s0)


def test_stale_codes_are_rejected(model_and_vars):
    model, v = model_and_vars
    codes, labels, ids = random_data(11)
    v0, s0 = fit_exact(model, v, codes, labels, ids)
    masked = {**v0, "mask": {**v0["mask"], "search": v0["mask"]["search"].at[0, 0].set(True)}}
    with pytest.raises(ValueError, match="stale"):
        remove_examples(masked, s0, ids[:1])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"kind": "mean"}, "kind"),
        ({"temperature": -1.0}, "temperature"),
        ({"kind": "prob", "prior_correction": True}, "prior_correction"),
    ],
)
def test_estimator_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"EstimatorConfig.{field}"):
        EstimatorConfig(**kwargs)


def test_duplicate_ids_and_non_vote_decoder_rejected(model_and_vars):
    model, v = model_and_vars
    codes, labels, _ = random_data(12, n=4)
    with pytest.raises(ValueError, match="unique"):
        fit_exact(model, v, codes, labels, [1, 2, 2, 3])
    lin = DKVB(model.config.replace(decoder="linear"))
    with pytest.raises(ValueError, match="vote decoder"):
        fit_exact(lin, lin.init(jax.random.key(0), jnp.zeros((1, D))), codes, labels)


# ------------------------------------------------------------------ audit


def _provenance(keys: Rows | None) -> Provenance:
    return Provenance(
        "toy/train",
        (
            Part("encoder", "identity", ()),
            Part("preprocess", "none", ()),
            Part("keys", "ema_kmeans", None if keys is None else (keys,)),
            Part("values", "adam", (Rows("toy/train", labels=True),)),
        ),
    )


@pytest.mark.parametrize(
    "provenance, certified, blames",
    [
        (CLEAN, True, ()),
        (None, False, ("encoder", "preprocess", "keys")),
        (_provenance(Rows("toy/train", [0, 1, 2, 3])), True, ()),  # disjoint from [5, 9]
        (_provenance(Rows("toy/train", [0, 9])), False, ("keys",)),
        (_provenance(None), False, ("keys",)),
        (_provenance(Rows("toy/train")), False, ("keys",)),  # every row
    ],
    ids=["clean", "no-provenance", "keys-disjoint", "keys-saw-9", "keys-unrecorded", "keys-all"],
)
def test_certificate_from_provenance_and_json_roundtrip(
    model_and_vars, provenance, certified, blames
):
    model, v = model_and_vars
    codes, labels, _ = random_data(13)
    ids = np.arange(codes.shape[0])
    v0, s0 = fit_exact(model, v, codes, labels, ids, provenance=provenance)
    _, _, rec = remove_examples(v0, s0, [5, 9])
    assert rec.certified is certified
    assert rec.certificate["values_exact"] is True
    assert tuple(rec.certificate["parts_that_saw"]) == blames
    for part in blames:
        assert part in rec.certificate["reason"]
    assert rec.forgotten_examples == [5, 9] and rec.changed
    assert AuditRecord.from_json(rec.to_json()) == rec
    assert json.loads(rec.to_json())["certificate"]["certified"] is certified


def test_removal_records_the_remaining_rows_in_the_provenance(model_and_vars):
    model, v = model_and_vars
    codes, labels, ids = random_data(15)
    _, s0 = fit_exact(model, v, codes, labels, ids, provenance=CLEAN)
    _, s1, _ = remove_examples(*fit_exact(model, v, codes, labels, ids, provenance=CLEAN), ids[:2])
    assert set(s0.provenance.part("values").rows[0].ids.tolist()) == set(ids.tolist())
    assert set(s1.provenance.part("values").rows[0].ids.tolist()) == set(ids[2:].tolist())


# ------------------------------------------------------------------ jit / vmap


class TestComposition(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_values_without_vmap_over_forget_sets_equals_loop(self):
        model = DKVB(
            DKVBConfig(
                embed_dim=D, num_classes=Y, num_codebooks=C, num_keys=K, key_dim=3, top_k=TOPK
            )
        )
        v = model.init(jax.random.key(0), jnp.zeros((2, D)))
        codes, labels, ids = random_data(14)
        cfg = EstimatorConfig(kind="centered_log_prob")
        v0, s0 = fit_exact(model, v, codes, labels, ids, estimator=cfg)
        rng = np.random.default_rng(14)
        forget = rng.random((5, ids.size)) < 0.3
        fn = self.variant(jax.vmap(lambda f: values_without(s0, f, cfg)))
        values, ok = fn(jnp.asarray(forget))
        assert bool(ok.all())
        for i in range(forget.shape[0]):
            ref, _, _ = remove_examples(v0, s0, ids[forget[i]], estimator=cfg)
            assert bitwise_equal(values[i], ref["params"]["values"])
