"""experiments/class_unlearning.py: every class x seed, UvA / UvE / oracle, mean and worst."""

import json

import jax
import numpy as np
import pytest
from script_testutil import load_script

from dkvb_jax.experiment import ExperimentConfig
from dkvb_jax.experiment.recipe import fit_from_config
from dkvb_jax.testing import clustered_embeddings
from dkvb_jax.unlearning import unlearn_via_activations, unlearn_via_examples

TINY = ["--codebooks", "8", "--keys", "32", "--key-dim", "4", "--key-epochs", "2"]
CFG = ExperimentConfig(
    num_codebooks=8,
    num_keys=32,
    key_dim=4,
    key_epochs=2,
    n_a_grid=(1, 2, 4, 8, 32),
    n_e_grid=(1, 5, 20, 1000),
)


@pytest.fixture(scope="module")
def script():
    return load_script("experiments/class_unlearning.py", "every_class")


@pytest.fixture(scope="module")
def data():
    x, y = clustered_embeddings(0, 500, num_classes=4, dim=16, noise=1.5)
    xt, yt = clustered_embeddings(1, 200, num_classes=4, dim=16, noise=1.5)
    return x, y, xt, yt


def _accuracy(model, v, x, y, rows):
    return float((np.asarray(model.apply(v, x[rows])).argmax(-1) == y[rows]).mean())


def test_each_record_equals_the_unlearned_model_itself(script, data):
    x, y, xt, yt = data
    key = jax.random.key(0)
    fit = fit_from_config(CFG, x, y, num_classes=4, key=key, progress=False)
    xd, yd = x[fit.rows], y[fit.rows]
    runs = script.run_seed(fit, CFG, [1, 3], xd, yd, (xt, yt), key, progress=False)
    by = {(r["method"], r["class"]): r for r in runs}
    assert len(runs) == 4 * 2
    model, v = fit.fitted.model, fit.fitted.variables
    for c in (1, 3):
        _, forget_x = script.class_sweeps(fit.fitted, CFG, c, xd, yd, jax.random.fold_in(key, 1))
        uva = unlearn_via_activations(
            model, v, by["UvA", c]["n"], usage=fit.fitted.usage, classes=(c,)
        )[0]
        uve = unlearn_via_examples(model, v, forget_x[: by["UvE", c]["n"]], classes=(c,))[0]
        for method, variables in (("original", v), ("UvA", uva), ("UvE", uve)):
            rec = by[method, c]
            assert rec["forget_train"] == _accuracy(model, variables, xd, yd, yd == c)
            assert rec["retain_test"] == _accuracy(model, variables, xt, yt, yt != c)
            assert 0.0 <= rec["mia"] <= 1.0 and rec["mia_per_side"] > 0
        assert by["UvA", c]["reached"] and by["UvE", c]["reached"]
        # Closed-form values refitted without the class never predict it.
        assert by["oracle", c]["forget_train"] == by["oracle", c]["forget_test"] == 0.0


def test_main_fits_once_per_seed_and_writes_the_summary(script, data, tmp_path, monkeypatch):
    x, y, xt, yt = data
    npz = tmp_path / "emb.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=xt, y_test=yt)
    fits = []
    real_fit = script.fit_from_config
    monkeypatch.setattr(
        script, "fit_from_config", lambda *a, **k: fits.append(1) or real_fit(*a, **k)
    )
    out = tmp_path / "out"
    argv = [
        "--embeddings",
        str(npz),
        *TINY,
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--set",
        "n_a_grid=[1,4,32]",
        "n_e_grid=[5,1000]",
        "--no-progress",
    ]
    assert script.main(argv) == 0
    assert len(fits) == 2  # one model per seed, every class evaluated from it
    saved = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in saved["summary"]}
    assert list(rows) == ["original", "UvA", "UvE", "oracle"]
    assert all(r["runs"] == 4 * 2 for r in rows.values())
    assert saved["meta"]["wall_s"] > 0 and saved["meta"]["cpu_s"] > 0
    runs = json.loads((out / "runs.json").read_text())
    assert {(r["seed"], r["class"]) for r in runs} == {(s, c) for s in (0, 1) for c in range(4)}
    assert {tuple(p["n"] for p in r["sweep"]) for r in runs if r["method"] == "UvA"} == {(1, 4, 32)}
    md = (out / "summary.md").read_text()
    assert "| UvE" in md and "4 classes x 2 seeds" in md
    for png in ("sweep_uva", "sweep_uve"):
        assert (out / f"{png}.png").stat().st_size > 1000


def test_summary_mean_and_worst(script):
    def rec(method, f, r, mia, **extra):
        return dict(
            method=method,
            forget_train=f,
            forget_test=f,
            retain_train=r,
            retain_test=r,
            mia=mia,
            **extra,
        )

    runs = [
        rec("UvA", 0.0, 0.8, 0.45, n=4, reached=True),
        rec("UvA", 0.2, 0.9, 0.52, n=16, reached=False),
    ]
    (row,) = script.summarise(runs)
    assert row["forget_test_mean"] == pytest.approx(0.1)
    assert row["forget_test_worst"] == 0.2 and row["retain_test_worst"] == 0.8
    assert row["mia_worst"] == 0.45  # farthest from chance
    assert (row["n_min"], row["n_max"], row["reached"]) == (4, 16, 1)
    line = script.to_markdown([row]).splitlines()[2]
    assert "10.00 ± 10.00 (20.00)" in line and "1/2" in line
