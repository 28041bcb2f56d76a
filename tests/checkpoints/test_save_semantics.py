"""save_model never silently keeps an old model: existing steps, purges, validation, damage."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dkvb_jax import checkpoints
from dkvb_jax.checkpoints import _orbax
from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import DKVB

CONFIG = DKVBConfig(embed_dim=16, num_classes=3, num_codebooks=8, num_keys=16, key_dim=4)


def _variables(config=CONFIG, seed=0):
    variables = DKVB(config).init(jax.random.key(seed), jnp.ones((2, config.embed_dim)))
    values = jax.random.normal(jax.random.key(seed + 1), variables["params"]["values"].shape)
    return {**variables, "params": {**variables["params"], "values": values}}


def _values(directory, step=None):
    return np.asarray(checkpoints.restore_model(directory, step=step).variables["params"]["values"])


def _names(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir())


def test_saving_at_an_existing_step_is_refused(tmp_path):
    old = _variables(seed=0)
    checkpoints.save_model(tmp_path, CONFIG, old)
    with pytest.raises(checkpoints.CheckpointError, match=r"Step 0 already exists.*overwrite=True"):
        checkpoints.save_model(tmp_path, CONFIG, _variables(seed=5), step=0)
    np.testing.assert_array_equal(_values(tmp_path), old["params"]["values"])


def test_overwrite_replaces_the_step(tmp_path):
    checkpoints.save_model(tmp_path, CONFIG, _variables(seed=0))
    new = _variables(seed=5)
    assert checkpoints.save_model(tmp_path, CONFIG, new, step=0, overwrite=True) == 0
    np.testing.assert_array_equal(_values(tmp_path), new["params"]["values"])
    assert _names(tmp_path) == ["0"]  # nothing staged is left behind


def test_a_missing_step_below_the_latest_is_written(tmp_path):
    # orbax skips (returns False for) any step at or below the latest one.
    checkpoints.save_model(tmp_path, CONFIG, _variables(seed=0), step=2)
    new = _variables(seed=5)
    assert checkpoints.save_model(tmp_path, CONFIG, new, step=1) == 1
    assert checkpoints.list_steps(tmp_path) == [1, 2]
    np.testing.assert_array_equal(_values(tmp_path, step=1), new["params"]["values"])


def _crash(*args, **kwargs):
    raise KeyboardInterrupt("simulated crash")


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("overwrite", [False, True], ids=["new-step", "replace"])
@pytest.mark.parametrize("where", ["while-writing", "after-the-old-step-moved-aside"])
def test_a_crash_leaves_the_old_or_the_new_complete_step(tmp_path, monkeypatch, overwrite, where):
    old, new = _variables(seed=0), _variables(seed=5)
    checkpoints.save_model(tmp_path, CONFIG, old)
    step = 0 if overwrite else 1
    if where == "while-writing":
        monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "async_save", _crash)
        monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "save", _crash)
    else:  # the new step is complete; the crash comes before it is renamed into place
        monkeypatch.setattr(_orbax, "move_into_place", _crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_model(tmp_path, CONFIG, new, step=step, overwrite=overwrite)
    monkeypatch.undo()
    # Only a replacement whose old step was already moved aside is completed; anything else
    # interrupted never happened.
    finished = overwrite and where != "while-writing"
    assert checkpoints.list_steps(tmp_path) == [0]
    np.testing.assert_array_equal(
        _values(tmp_path), (new if finished else old)["params"]["values"]
    )
    assert _names(tmp_path) == ["0"]


def test_purge_earlier_deletes_them_and_records_it(tmp_path):
    for seed in range(2):
        checkpoints.save_model(tmp_path, CONFIG, _variables(seed=seed))
    last = _variables(seed=7)
    assert checkpoints.save_model(tmp_path, CONFIG, last, purge_earlier=True) == 2
    assert checkpoints.list_steps(tmp_path) == [2]
    restored = checkpoints.restore_model(tmp_path)
    assert restored.purged_steps == (0, 1)
    assert checkpoints.read_meta(tmp_path)[1]["purged_steps"] == [0, 1]
    np.testing.assert_array_equal(restored.variables["params"]["values"], last["params"]["values"])


def test_purge_steps(tmp_path):
    for seed in range(3):
        checkpoints.save_model(tmp_path, CONFIG, _variables(seed=seed))
    with pytest.raises(checkpoints.CheckpointError, match=r"keep names steps \[7\]"):
        checkpoints.purge_steps(tmp_path, keep=[1, 7])
    assert checkpoints.list_steps(tmp_path) == [0, 1, 2]
    assert checkpoints.purge_steps(tmp_path, keep=1) == [0, 2]
    assert checkpoints.list_steps(tmp_path) == [1]
    assert checkpoints.restore_model(tmp_path).purged_steps == ()  # saved without a purge


def test_a_purge_interrupted_after_the_save_is_reported(tmp_path, monkeypatch):
    checkpoints.save_model(tmp_path, CONFIG, _variables(seed=0))
    monkeypatch.setattr(ocp.CheckpointManager, "delete", _crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_model(tmp_path, CONFIG, _variables(seed=1), purge_earlier=True)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"steps \[0\] were purged, but they are still"):
        checkpoints.restore_model(tmp_path)


def test_max_to_keep_still_applies(tmp_path):
    for seed in range(3):
        checkpoints.save_model(tmp_path, CONFIG, _variables(seed=seed), max_to_keep=2)
    assert checkpoints.list_steps(tmp_path) == [1, 2]


def test_provenance_round_trips(tmp_path):
    provenance = {"keys": {"rows": "sha256:ab", "n": 3}, "values": None}
    checkpoints.save_model(tmp_path, CONFIG, _variables(), provenance=provenance)
    assert checkpoints.restore_model(tmp_path).provenance == provenance
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    assert checkpoints.restore_model(tmp_path).provenance is None
    with pytest.raises(TypeError, match="provenance must be JSON-serialisable"):
        checkpoints.save_model(tmp_path, CONFIG, _variables(), provenance={"ids": object()})


def _with(variables, path, leaf):
    col, name = path
    return {**variables, col: {**variables[col], name: leaf}}


@pytest.mark.parametrize(
    "make, error, match",
    [
        # The case: variables of K=32 under a K=16 config restored "successfully".
        (
            lambda v: _variables(CONFIG.replace(num_keys=32)),
            ValueError,
            r"variables\['frozen'\]\['keys'\] has shape \(8, 32, 4\).*\(8, 16, 4\)",
        ),
        (
            lambda v: _with(v, ("params", "values"), v["params"]["values"].at[1, 2, 0].set(jnp.nan)),
            ValueError,
            r"variables\['params'\]\['values'\] holds 1 non-finite",
        ),
        (
            lambda v: _with(v, ("frozen", "keys"), v["frozen"]["keys"].at[0, 0, 0].set(-jnp.inf)),
            ValueError,
            r"variables\['frozen'\]\['keys'\] holds 1 non-finite",
        ),
        (
            lambda v: _with(v, ("mask", "search"), v["mask"]["search"].astype(jnp.float32)),
            ValueError,
            r"variables\['mask'\]\['search'\] has dtype float32.*bool",
        ),
        (
            lambda v: _with(v, ("params", "values"), v["params"]["values"].astype(jnp.float16)),
            ValueError,
            r"variables\['params'\]\['values'\] has dtype float16",
        ),
        (lambda v: {**v, "batch_stats": {}}, ValueError, r"unexpected \['batch_stats'\]"),
        (
            lambda v: {**v, "frozen": {"keys": v["frozen"]["keys"]}},
            ValueError,
            r"missing \['frozen/projection'\]",
        ),
        (lambda v: {**v, "mask": None}, ValueError, "'mask' collection"),
        (lambda v: [v], TypeError, "variables must be a DKVB variables dict"),
        (
            lambda v: _with(v, ("params", "values"), v["params"]["values"].tolist()),
            TypeError,
            r"variables\['params'\]\['values'\] must be an array",
        ),
    ],
    ids=[
        "other-num-keys",
        "nan",
        "inf",
        "float-mask",
        "half-values",
        "extra-collection",
        "missing-leaf",
        "missing-collection",
        "not-a-dict",
        "list-leaf",
    ],
)
def test_variables_that_do_not_fit_the_config_are_refused(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        checkpoints.save_model(tmp_path, CONFIG, make(_variables()))
    assert not (tmp_path / "0").exists()


@pytest.mark.parametrize("under", [False, True], ids=["is-a-file", "under-a-file"])
def test_a_directory_that_is_a_file_is_refused(tmp_path, under):
    file = tmp_path / "model.ckpt"
    file.write_text("not a folder")
    target = file / "sub" if under else file
    with pytest.raises(checkpoints.CheckpointError, match="not a checkpoint folder"):
        checkpoints.save_model(target, CONFIG, _variables())
    for call in (checkpoints.restore_model, checkpoints.read_meta, checkpoints.list_steps):
        with pytest.raises(checkpoints.CheckpointError, match="not a checkpoint folder"):
            call(target)


def _variables_files(step_dir, part):
    return [p for p in (step_dir / "variables").rglob("*") if p.is_file() and part in str(p)]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "bytes, .* were saved"),
        (lambda p: p.write_bytes(bytes(len(p.read_bytes()))), "has changed since it was saved"),
        (lambda p: p.unlink(), "is missing"),
    ],
    ids=["truncated", "same-size-garbage", "deleted"],
)
@pytest.mark.parametrize("part", ["ocdbt.process_0/d/", "manifest.ocdbt", "_METADATA"])
def test_a_damaged_file_gives_one_clear_error_and_no_stderr_dump(
    tmp_path, capfd, damage, match, part
):
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    for p in _variables_files(tmp_path / "0", part):
        damage(p)
    with pytest.raises(checkpoints.CheckpointError, match=f"its file variables/.*{match}"):
        checkpoints.restore_model(tmp_path)
    assert capfd.readouterr().err == ""


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_a_legacy_step_without_file_list_fails_without_the_coroutine_dump(tmp_path, monkeypatch):
    # Saved before file lists existed: the damage reaches TensorStore, whose abandoned read
    # coroutines would each print a TensorStore spec through sys.unraisablehook.
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    (tmp_path / "0" / _orbax.FILES).unlink()
    for p in _variables_files(tmp_path / "0", "ocdbt.process_0/d/"):
        p.write_bytes(bytes(len(p.read_bytes())))
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(checkpoints.CheckpointError, match="its variables cannot be read") as e:
        checkpoints.restore_model(tmp_path)
    assert "TensorStore details" not in str(e.value) and "\n" not in str(e.value)
    assert [u for u in seen if _orbax._from_orbax(u)] == []


def test_old_checkpoints_without_the_new_meta_fields_restore(tmp_path):
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    meta_file = tmp_path / "0" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["provenance"], meta["purged_steps"]
    meta_file.write_text(json.dumps(meta))
    restored = checkpoints.restore_model(tmp_path)
    assert restored.provenance is None and restored.purged_steps == ()
