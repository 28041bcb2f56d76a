"""The class-unlearning experiment on synthetic clustered embeddings: rows, sweeps, files, plots."""

import dataclasses
import json

import numpy as np
import pytest

from dkvb_jax.baselines import StoppingConfig
from dkvb_jax.cli.common import RECIPE_CHOICES
from dkvb_jax.encoders import register_encoder
from dkvb_jax.evaluation import ResultsTable
from dkvb_jax.evaluation.table import FORGET_TOLERANCE
from dkvb_jax.experiment import (
    DKVB_METHODS,
    ExperimentConfig,
    best_learned_class,
    fit_dkvb,
    load_fitted,
    run_class_unlearning,
    save_plots,
    standardizer,
)
from dkvb_jax.experiment.baseline_rows import baseline_config
from dkvb_jax.experiment.config import RECIPES
from dkvb_jax.experiment.fitting import build_model
from dkvb_jax.model import DKVB
from dkvb_jax.model.preprocess import Affine, fold_affine
from dkvb_jax.provenance import Rows
from dkvb_jax.testing import clustered_embeddings
from dkvb_jax.unlearning import METHODS

# Trained values, LDA and keys on every training row: the pipeline's masking rows, baselines and
# the not-certified exact row (test_recipe.py covers the certified default recipe).
TINY = ExperimentConfig.recipe(
    "lda_adam",
    num_codebooks=8,
    num_keys=32,
    key_dim=4,
    key_epochs=2,
    value_epochs=5,
    head_epochs=5,
    baseline_max_epochs=2,
    n_a_grid=(1, 2, 4, 8),
    n_e_grid=(1, 2, 5, 10, 20),
    baselines=("finetune",),
    dkvb_finetune=False,
)


def _data():
    x, y = clustered_embeddings(0, 400, num_classes=4, dim=16)
    xt, yt = clustered_embeddings(1, 160, num_classes=4, dim=16)
    return (x, y), (xt, yt)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    train, test = _data()
    rows = tmp_path_factory.mktemp("rows")
    return run_class_unlearning(train, test, TINY, cache_dir=rows, progress=False), rows


def test_rows_and_forgetting(result):
    res, _ = result
    methods = res.table.methods
    assert methods == [
        "original",
        "original (linear head)",
        "finetune",
        "DKVB-UvA",
        "DKVB-UvE",
        "original (DKVB closed form)",
        "DKVB-exact",
    ]
    row = {r.method: r for r in res.table.rows}
    # Each class owns its own clusters: UvA with the swept N forgets it and keeps the others.
    assert row["DKVB-UvA"].forget_test_acc == 0.0
    assert row["DKVB-UvA"].retain_test_acc >= row["original"].retain_test_acc - 0.02
    assert row["original"].forget_test_acc > 0.9
    assert res.sweeps["uva"].smallest_n == res.n_a
    # DKVB unlearning needs no backward pass; the baseline does.
    assert row["DKVB-UvA"].extra["cost"]["backward_flops"] == 0
    assert row["finetune"].extra["cost"]["backward_flops"] > 0
    assert all(0 <= r.mia <= 1 for r in res.table.rows)
    assert set(row["DKVB-UvA"].extra["per_class_test_acc"]) == {"0", "1", "2", "3"}
    assert res.audits["uva"].forgotten_classes == list(res.forget_classes)


def test_rows_report_retain_train_and_the_mia_spread(result):
    res, _ = result
    for row in res.table.rows:
        assert row.retain_train_acc == row.extra["accuracies"]["retain_train"]
        assert row.mia_result.n_per_side > 0 and row.mia_result.std >= 0
    row = {r.method: r for r in res.table.rows}
    assert row["DKVB-UvA"].extra["original_row"] == "original"
    assert row["finetune"].extra["original_row"] == "original (linear head)"
    assert row["DKVB-exact"].extra["original_row"] == "original (DKVB closed form)"


def test_baselines_run_to_the_dkvb_rows_forget_accuracy_or_their_cap(result):
    res, _ = result
    row = {r.method: r for r in res.table.rows}
    assert res.table.reference == "DKVB-UvA"
    target = row["DKVB-UvA"].forget_test_acc + FORGET_TOLERANCE
    stopping = row["finetune"].extra["stopping"]
    assert stopping["forget_target"] == pytest.approx(target) and stopping["patience"] is None
    assert stopping["split"] == "val_forget"
    traj = row["finetune"].extra["trajectory"]
    reached = [
        e for e, a in zip(traj["epoch"], traj["val_forget_acc"], strict=True) if e and a <= target
    ]
    expected = reached[0] if reached else TINY.baseline_max_epochs
    assert traj["stop_epoch"] == expected
    assert traj["stop_reason"] == ("target" if reached else "max_epochs")
    assert res.table.reached(row["finetune"]) is bool(reached)


def test_baseline_config_has_no_plateau_and_reads_held_out_forget_rows():
    cfg = baseline_config("neggrad+", config=TINY, target=0.3, progress=False)
    assert cfg.stopping == StoppingConfig(
        max_epochs=TINY.baseline_max_epochs, forget_target=0.3, patience=None, split="val_forget"
    )
    # Without a DKVB row to match, the paper's target on the forget training rows, no plateau.
    cfg = baseline_config("scrub", config=TINY, target=None, progress=False)
    assert cfg.stopping.split == "forget" and cfg.stopping.patience is None
    assert cfg.stopping.forget_target == TINY.target


def test_exact_row_equals_refit_and_says_why_it_is_not_certified(result):
    res, _ = result
    row = {r.method: r for r in res.table.rows}["DKVB-exact"]
    assert row.forget_test_acc == 0.0
    assert row.extra["bit_identical_to_refit"] is True
    assert row.extra["cost"]["backward_flops"] == 0
    # The keys were fitted on the (unlabelled) training rows, forget class included.
    assert row.extra["certified_exact"] is False
    assert "the keys (ema_kmeans on " in row.extra["exact_reason"]
    assert res.audits["exact"].forgotten_classes == list(res.forget_classes)


def test_any_registered_method_gets_its_row_through_the_registry():
    """A method the default comparison leaves out (UvA from a data pass) gets its row, sweep,
    size and cost from its spec like the others: named by its label, costed with its pass over
    the forget examples."""
    train, test = _data()
    cfg = TINY.replace(methods=("uva_pass",), baselines=(), mia=False)
    res = run_class_unlearning(train, test, cfg, progress=False)
    assert res.table.methods == ["original", "original (linear head)", "DKVB-UvA (data pass)"]
    row = res.table.rows[2]
    sweep = res.sweeps["uva_pass"]
    assert row.extra["n_a"] == res.sizes["uva_pass"] == res.n_a
    assert res.n_a == (sweep.smallest_n or max(sweep.ns)) and res.n_e is None
    assert row.extra["cost"]["extra"]["source"] == "forget examples"
    assert row.extra["cost"]["forward_flops"] > 0
    assert res.audits["uva_pass"].method == "uva_pass"
    assert res.to_dict()["sizes"] == {"uva_pass": res.n_a}


def test_config_runs_only_registered_methods():
    with pytest.raises(ValueError, match=r"methods has unknown entries \['bogus'\]"):
        TINY.replace(methods=("uva", "bogus"))


@pytest.fixture(scope="module")
def features_encoder():
    """Embeddings that are the features themselves: an encoder trained on no data."""
    register_encoder("test_identity", lambda: None, trained_on=(), overwrite=True)
    return "test_identity"


@pytest.mark.parametrize(
    "preprocess, key_rows, certified, blames",
    [
        ("standardize", Rows("toy_other/train"), True, ()),
        ("lda", Rows("toy_other/train"), False, ("preprocess",)),  # LDA on every labelled row
        ("standardize", None, False, ("preprocess", "keys")),  # key data not named
    ],
)
def test_exact_row_certified_only_when_no_frozen_state_saw_the_training_rows(
    features_encoder, preprocess, key_rows, certified, blames
):
    train, test = _data()
    other, _ = clustered_embeddings(2, 300, num_classes=4, dim=16)
    cfg = TINY.replace(methods=("exact",), baselines=(), mia=False, preprocess=preprocess)
    res = run_class_unlearning(
        train,
        test,
        cfg,
        key_data=other,
        progress=False,
        dataset="toy/train",
        key_rows=key_rows,
        encoder=features_encoder,
    )
    row = {r.method: r for r in res.table.rows}["DKVB-exact"]
    assert row.extra["certified_exact"] is certified
    assert row.extra["bit_identical_to_refit"] is True
    for part in blames:
        assert f"the {part} (" in row.extra["exact_reason"]


def test_saved_files_and_plots(result, tmp_path):
    res, _ = result
    paths = res.save(tmp_path)
    paths.update(save_plots(res, tmp_path))
    for name in ("sweep_uva", "sweep_uve", "accuracy_vs_cost", "per_class"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    md = (tmp_path / "results.md").read_text().split("\n\n")[0].splitlines()
    assert len(md) == 2 + len(res.table.rows)
    csv_rows = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("method,retain_test_acc,retain_train_acc,forget_test_acc,mia")
    loaded = ResultsTable.load_json(tmp_path / "results.json")
    assert loaded.methods == res.table.methods
    sweeps = json.loads((tmp_path / "sweeps.json").read_text())
    assert set(sweeps) == {"uva", "uve"} and sweeps["uva"]["ns"] == [1, 2, 4, 8]


def test_rerun_reuses_cached_rows(result):
    res, rows = result
    train, test = _data()
    again = run_class_unlearning(
        train, test, TINY, cache_dir=rows, progress=False, fitted=res.fitted
    )
    # Rows come from the cache: wall times identical to the first run.
    assert [r.wall_s for r in again.table.rows] == [r.wall_s for r in res.table.rows]


def test_rows_cached_by_an_older_version_are_not_reused(tmp_path, monkeypatch):
    from dkvb_jax.experiment import class_unlearning as cu

    arrays = (np.arange(4.0),)
    old = cu._RowCache(tmp_path, cu._run_id(TINY, *arrays))
    old.put("finetune", {"method": "finetune"})
    monkeypatch.setattr(cu, "ROWS_VERSION", cu.ROWS_VERSION + 1)
    assert cu._RowCache(tmp_path, cu._run_id(TINY, *arrays)).get("finetune") is None


def test_folded_standardization_keeps_codes():
    x, _ = clustered_embeddings(3, 64, dim=16)
    x = x * 3 + 5  # far from standardised
    mu, sd = standardizer(x)
    cfg = TINY.dkvb_config(16, 5)
    model, v = build_model(cfg, __import__("jax").random.key(0))
    folded = fold_affine(v, Affine(mu, 1.0 / sd))  # what fit_dkvb folds for "standardize"
    a = np.asarray(model.apply(v, (x - mu) / sd, method=DKVB.codes)[0])
    b = np.asarray(model.apply(folded, x, method=DKVB.codes)[0])
    assert (a == b).mean() > 0.99  # equal up to float rounding of near-ties


@pytest.mark.parametrize("preprocess", ["none", "standardize", "pca_whiten", "lda"])
def test_fit_dkvb_preprocessing_is_folded_and_checked(preprocess):
    """Every kind gives a model that reads raw embeddings and learns the clustered classes."""
    import jax

    (x, y), (xt, yt) = _data()
    fitted = fit_dkvb(
        TINY.dkvb_config(16, 4),
        x,
        y,
        key=jax.random.key(0),
        key_config=TINY.key_config(),
        value_config=TINY.value_config(),
        preprocess=preprocess,
        progress=False,
    )
    pred = np.asarray(fitted.model.apply(fitted.variables, xt)).argmax(-1)
    assert np.mean(pred == yt) > 0.8


def test_fit_dkvb_rejects_unknown_preprocessing():
    import jax

    (x, y), _ = _data()
    with pytest.raises(ValueError, match="preprocess must be one of"):
        fit_dkvb(TINY.dkvb_config(16, 4), x, y, key=jax.random.key(0), preprocess="zca")


def test_checkpointed_fit_resumes(tmp_path):
    import jax

    (x, y), _ = _data()
    cfg = TINY.dkvb_config(16, 4)
    kw = dict(
        key=jax.random.key(0),
        key_config=TINY.key_config(),
        value_config=dataclasses.replace(TINY.value_config(), epochs=2),
        progress=False,
    )
    first = fit_dkvb(cfg, x, y, checkpoint_dir=tmp_path, **kw)
    again = fit_dkvb(cfg, x, y, checkpoint_dir=tmp_path, **kw)  # restored, not refitted
    assert again.history is None
    np.testing.assert_array_equal(
        first.variables["params"]["values"], again.variables["params"]["values"]
    )
    with pytest.raises(ValueError, match="different model configuration"):
        load_fitted(tmp_path, config=cfg.replace(num_keys=16))
    with pytest.raises(ValueError, match=r"other settings \(data: saved sha256"):
        fit_dkvb(cfg, x[:200], y[:200], checkpoint_dir=tmp_path, **kw)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(num_keys=0), "num_keys"),
        (dict(baselines=("bogus",)), "baselines"),
        (dict(sweep_split="val"), "sweep_split"),
        (dict(n_a_grid=()), "n_a_grid"),
        (dict(forget_classes=(-1,)), "forget_classes"),
        (dict(preprocess="zca"), "preprocess must be one of"),
        (dict(value_optimizer="rmsprop"), "optimizer"),
        (dict(value_label_smoothing=1.0), "label_smoothing"),
    ],
)
def test_config_rejects_bad_values(change, match):
    with pytest.raises(ValueError, match=match):
        TINY.replace(**change)


def test_config_round_trip_and_best_class():
    assert ExperimentConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="Unknown ExperimentConfig fields"):
        ExperimentConfig.from_dict({"codebooks": 3})
    assert best_learned_class({0: 0.5, 1: 0.9, 2: 0.9}) == 1


def test_config_recipes():
    """The default recipe is the certified one; "recipe": "paper" (or .paper()) is the paper's,
    "lda_adam" issue 10's, and a config file's own fields still override any of them."""
    default, paper = ExperimentConfig(), ExperimentConfig.paper(num_keys=64)
    assert ExperimentConfig.recipe("certified") == default
    assert (default.preprocess, default.values, default.holdout_fraction) == ("lda", "counts", 0.2)
    lda_adam = ExperimentConfig.recipe("lda_adam")
    assert (lda_adam.values, lda_adam.holdout_fraction, lda_adam.value_optimizer) == (
        "trained",
        0.0,
        "adam",
    )
    assert (paper.values, paper.holdout_fraction) == ("trained", 0.0)
    assert set(RECIPE_CHOICES) == set(RECIPES)
    assert set(DKVB_METHODS) <= set(METHODS)  # the experiment runs registered methods
    vc = paper.value_config()
    assert (paper.preprocess, paper.top_k, paper.num_keys) == ("standardize", 1, 64)
    assert (vc.optimizer, vc.learning_rate, vc.label_smoothing, vc.clip_norm) == (
        "sgd",
        0.3,
        0.1,
        1.0,
    )
    assert ExperimentConfig.from_dict({"recipe": "paper", "num_keys": 64}) == paper
    assert ExperimentConfig.from_dict({"recipe": "paper", "top_k": 2}).top_k == 2
    assert ExperimentConfig.from_dict({"standardize": False}).preprocess == "none"  # legacy files
    with pytest.raises(ValueError, match="recipe must be"):
        ExperimentConfig.from_dict({"recipe": "fast"})
