"""Fitting from an ExperimentConfig: held-out split, provenance, and certified closed-form values."""

import numpy as np
import pytest

from dkvb_jax import exact
from dkvb_jax.encoders import register_encoder
from dkvb_jax.experiment import ExperimentConfig
from dkvb_jax.experiment.recipe import fit_from_config, holdout_rows
from dkvb_jax.testing import clustered_embeddings

TINY = ExperimentConfig(
    num_codebooks=4, num_keys=16, key_dim=4, key_epochs=2, baselines=(), mia=False
)
CERTIFIED = TINY.replace(exact_alpha=0.1)  # the default recipe is the certified one


@pytest.fixture(scope="module")
def encoder():
    register_encoder("test_identity", lambda: None, trained_on=(), overwrite=True)
    return "test_identity"


@pytest.fixture(scope="module")
def data():
    return clustered_embeddings(0, 300, num_classes=4, dim=16)


@pytest.mark.parametrize("n", [1, 37, 150, 299])
def test_holdout_rows_is_a_stratified_partition(n):
    y = np.repeat(np.arange(4), [120, 90, 60, 30])
    held, rest = holdout_rows(y, n, seed=3)
    assert held.size == n and np.array_equal(np.sort(np.concatenate([held, rest])), np.arange(300))
    share = np.bincount(y[held], minlength=4) / n
    assert np.all(np.abs(share - np.array([0.4, 0.3, 0.2, 0.1])) <= 1 / n + 1e-9)
    assert np.array_equal(held, holdout_rows(y, n, seed=3)[0])


@pytest.mark.parametrize("n", [0, 300, -1])
def test_holdout_rows_refuses_impossible_sizes(n):
    with pytest.raises(ValueError, match="holdout_fraction"):
        holdout_rows(np.zeros(300), n, seed=0)


def test_certified_recipe_certifies_every_value_row_and_no_held_out_row(data, encoder):
    x, y = data
    fit = fit_from_config(
        CERTIFIED, x, y, num_classes=4, dataset="toy/train", encoder=encoder, progress=False
    )
    fitted = fit.fitted
    assert fit.holdout.size == 60 and np.intersect1d(fit.holdout, fit.rows).size == 0
    parts = {p.name: p for p in fitted.provenance.parts}
    assert parts["preprocess"].rows[0].labels  # LDA used the held-out labels, and only those
    assert set(parts["preprocess"].rows[0].ids.tolist()) == set(fit.holdout.tolist())
    assert set(parts["keys"].rows[0].ids.tolist()) <= set(fit.holdout.tolist())
    assert parts["values"].subtractable and fitted.stats is not None
    ids = np.asarray(fitted.stats.ids)
    assert set(ids.tolist()) == set(fit.rows.tolist())
    # Any row the values were fitted on: certified, and equal to a refit without it.
    forget = ids[y[ids] == 2][:5]
    v, stats, rec = exact.remove_examples(
        fitted.variables, fitted.stats, forget, estimator=CERTIFIED.value_config()
    )
    assert rec.certified and "certified exact" in rec.certificate["reason"]
    keep = ~np.isin(ids, forget)
    ref, _ = exact.fit_exact(
        fitted.model,
        fitted.variables,
        np.asarray(fitted.stats.codes)[keep],
        np.asarray(fitted.stats.labels)[keep],
        ids[keep],
        estimator=CERTIFIED.value_config(),
    )
    assert np.array_equal(np.asarray(v["params"]["values"]), np.asarray(ref["params"]["values"]))
    # A held-out row is not in the counts: it can only be forgotten by refitting.
    with pytest.raises(ValueError, match="not counted"):
        exact.remove_examples(fitted.variables, fitted.stats, fit.holdout[:1])


@pytest.mark.parametrize(
    "config, dataset, blames",
    [
        (TINY.replace(holdout_fraction=0.0), "toy/train", ("preprocess", "keys")),  # LDA, keys on D
        (CERTIFIED, None, ("encoder",)),  # unnamed rows cannot be compared with the encoder's
    ],
)
def test_models_fitted_on_the_labelled_rows_are_not_certified(
    data, encoder, config, dataset, blames
):
    x, y = data
    fitted = fit_from_config(
        config, x, y, num_classes=4, dataset=dataset, encoder=encoder, progress=False
    ).fitted
    ids = np.asarray(fitted.stats.ids)
    _, _, rec = exact.remove_examples(
        fitted.variables, fitted.stats, ids[:3], estimator=config.value_config()
    )
    assert not rec.certified and rec.certificate["values_exact"]
    assert tuple(rec.certificate["parts_that_saw"]) == blames
