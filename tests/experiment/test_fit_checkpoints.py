"""fit_dkvb's checkpoint folder: resumes only the same fit, and forgetting can reach its disk."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from dkvb_jax import checkpoints
from dkvb_jax.experiment import ExperimentConfig, fit_dkvb, load_fitted, save_fitted
from dkvb_jax.experiment.fitted import RUN_FILE, FittedDKVB, earlier_state
from dkvb_jax.experiment.fitting import SETTINGS
from dkvb_jax.provenance import UNNAMED, Part, Rows
from dkvb_jax.testing import clustered_embeddings

TINY = ExperimentConfig.recipe(
    "lda_adam", num_codebooks=8, num_keys=32, key_dim=4, key_epochs=2, value_epochs=2
)
X, Y = clustered_embeddings(0, 400, num_classes=4, dim=16)
CONFIG = TINY.dkvb_config(16, 4)
KW = dict(
    key=jax.random.key(0),
    key_config=TINY.key_config(),
    value_config=TINY.value_config(),
    preprocess="lda",
    progress=False,
)


@pytest.fixture(scope="module")
def fitted_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit") / "ckpt"
    fitted = fit_dkvb(CONFIG, X, Y, checkpoint_dir=folder, **KW)
    return folder, fitted


@pytest.fixture
def folder(fitted_folder, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(fitted_folder[0], copy)
    return copy


def test_the_same_settings_resume(folder, fitted_folder):
    again = fit_dkvb(CONFIG, X, Y, checkpoint_dir=folder, **KW)
    assert again.history is None  # restored, not refitted
    np.testing.assert_array_equal(
        again.variables["params"]["values"], fitted_folder[1].variables["params"]["values"]
    )
    settings = json.loads((folder / RUN_FILE).read_text())[SETTINGS]
    assert settings["value_config"]["epochs"] == 2 and settings["preprocess"] == "lda"


OTHER_SETTINGS = [
    (
        dict(value_config=dataclasses.replace(TINY.value_config(), epochs=3)),
        "value_config.epochs: saved 2, requested 3",
    ),
    (
        dict(value_config=dataclasses.replace(TINY.value_config(), learning_rate=0.1)),
        "value_config.learning_rate: saved 0.5, requested 0.1",
    ),
    (
        dict(key_config=dataclasses.replace(TINY.key_config(), epochs=3)),
        "key_config.epochs: saved 2, requested 3",
    ),
    (
        dict(key=jax.random.key(1)),
        "key.data: saved [0, 0], requested [0, 1]",
    ),
    (
        dict(preprocess="standardize"),
        'preprocess: saved "lda", requested "standardize"',
    ),
    (
        dict(key_data=X[::-1]),
        "key_data: saved sha256 ",
    ),
    (
        dict(x=X[:200], y=Y[:200]),
        "(data: saved sha256 ",
    ),
    (
        dict(config=CONFIG.replace(num_keys=16)),
        "model_config.num_keys: saved 32, requested 16",
    ),
]


@pytest.mark.parametrize("change, named", OTHER_SETTINGS)
@pytest.mark.parametrize("finished", [True, False], ids=["fitted", "interrupted"])
def test_other_settings_are_refused_and_named(folder, change, named, finished):
    if not finished:  # only the keys/ and values/ of an interrupted fit are there
        shutil.rmtree(folder / "model")
    args = {"config": CONFIG, "x": X, "y": Y, **KW, **change}
    config, x, y = args.pop("config"), args.pop("x"), args.pop("y")
    with pytest.raises(checkpoints.CheckpointError, match="fitted with other settings") as e:
        fit_dkvb(config, x, y, checkpoint_dir=folder, **args)
    assert named in str(e.value) and "new checkpoint folder" in str(e.value)
    assert len(str(e.value).split(";")) == 1 + ("x" in change)  # x is also the key data


def test_an_interrupted_fit_resumes_with_the_same_settings(folder, fitted_folder):
    shutil.rmtree(folder / "model")
    again = fit_dkvb(CONFIG, X, Y, checkpoint_dir=folder, **KW)
    np.testing.assert_array_equal(
        again.variables["params"]["values"], fitted_folder[1].variables["params"]["values"]
    )


def test_a_folder_without_recorded_settings_is_refused(folder):
    info = json.loads((folder / RUN_FILE).read_text())
    del info[SETTINGS]  # as written by an older dkvb_jax
    (folder / RUN_FILE).write_text(json.dumps(info))
    with pytest.raises(checkpoints.CheckpointError, match="without a record of the settings"):
        fit_dkvb(CONFIG, X, Y, checkpoint_dir=folder, **KW)


def _unlearned(fitted):
    values = fitted.variables["params"]["values"].at[0].set(0.0)
    variables = {**fitted.variables, "params": {**fitted.variables["params"], "values": values}}
    return dataclasses.replace(fitted, variables=variables, audit=({"method": "test"},))


def test_purge_earlier_removes_earlier_steps_and_resume_state(folder):
    fitted, info = load_fitted(folder)
    save_fitted(folder, _unlearned(fitted), run_info=info)
    assert earlier_state(folder) == {"model_steps": [0], "folders": ["keys", "values"]}
    step = save_fitted(folder, _unlearned(fitted), run_info=info, purge_earlier=True)
    assert step == 2 and earlier_state(folder) == {"model_steps": [], "folders": []}
    assert checkpoints.restore_model(folder / "model").purged_steps == (0, 1)
    # The fitted model is gone, so the folder can no longer pass for a finished fit.
    with pytest.raises(checkpoints.CheckpointError, match="step 0 was purged"):
        fit_dkvb(CONFIG, X, Y, checkpoint_dir=folder, **KW)


def test_an_unlearned_step_zero_is_not_returned_as_fitted(folder, tmp_path):
    fitted, info = load_fitted(folder)
    out = tmp_path / "forgot"  # like 'dkvb unlearn --out': step 0 is already unlearned
    save_fitted(out, _unlearned(fitted), run_info=info)
    with pytest.raises(checkpoints.CheckpointError, match="is an unlearned model"):
        fit_dkvb(CONFIG, X, Y, checkpoint_dir=out, **KW)


def test_provenance_is_saved_and_loaded(folder):
    fitted, info = load_fitted(folder)
    assert fitted.provenance.data == UNNAMED  # fitted without naming its rows
    provenance = fitted.provenance.with_part(Part("keys", "ema_kmeans", (Rows("other/train"),)))
    save_fitted(folder, dataclasses.replace(fitted, provenance=provenance), run_info=info)
    assert load_fitted(folder)[0].provenance == provenance
    assert isinstance(fitted, FittedDKVB)


def test_key_data_given_as_x_itself_is_not_recorded_as_the_labelled_rows(fitted_folder):
    """Only key_data=None means "the keys are fitted on (x, y)"; the same array passed as key
    data comes with no row names, so the keys' rows stay unrecorded (nothing is certified)."""
    x = np.asarray(X, np.float32)  # so that fit_dkvb keeps the very same array
    given = fit_dkvb(CONFIG, x, Y, key_data=x, **KW)
    assert fitted_folder[1].provenance.part("keys").rows == (Rows(UNNAMED, np.arange(len(X))),)
    assert given.provenance.part("keys").rows is None
