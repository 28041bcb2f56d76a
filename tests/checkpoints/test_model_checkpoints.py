"""Model checkpoints: bit-identical round trips, cross-device-count restores, refusals."""

import jax

if jax.device_count() < 8:  # conftest.py forces 8 CPU devices; keep the module runnable alone.
    jax.config.update("jax_num_cpu_devices", 8)

import json  # noqa: E402
import pathlib  # noqa: E402

import chex  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import pytest  # noqa: E402

from dkvb_jax import checkpoints, parallel  # noqa: E402
from dkvb_jax.config import DKVBConfig  # noqa: E402
from dkvb_jax.model import DKVB  # noqa: E402

CONFIG = DKVBConfig(embed_dim=16, num_classes=3, num_codebooks=8, num_keys=16, key_dim=4)


def _variables(config=CONFIG, seed=0):
    variables = DKVB(config).init(jax.random.key(seed), jnp.ones((2, config.embed_dim)))
    values = jax.random.normal(jax.random.key(seed + 1), variables["params"]["values"].shape)
    rng = np.random.default_rng(seed)
    masks = {k: jnp.asarray(rng.random(v.shape) < 0.2) for k, v in variables["mask"].items()}
    return {**variables, "params": {**variables["params"], "values": values}, "mask": masks}


def _assert_bit_identical(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _audit_records():
    audit = pytest.importorskip("dkvb_jax.unlearning.audit")
    before = _variables()
    after = {**before, "mask": {**before["mask"], "search": ~before["mask"]["search"]}}
    return [
        audit.make_record(
            method="uva", params={"n_a": 2}, before=before, after=after, forgotten_classes=[1]
        )
    ]


@pytest.mark.parametrize("decoder", ["vote", "linear"])
def test_round_trip_is_bit_identical(tmp_path, decoder):
    config = CONFIG.replace(decoder=decoder)
    variables = _variables(config)
    records = _audit_records()
    step = checkpoints.save_model(
        tmp_path, config, variables, encoder="cifar_resnet20", audit=records
    )
    restored = checkpoints.restore_model(tmp_path, config=config)
    assert (restored.step, restored.config, restored.encoder) == (step, config, "cifar_resnet20")
    assert restored.audit == records
    _assert_bit_identical(restored.variables, variables)


def test_plain_dict_audit_records_round_trip(tmp_path):
    records = [{"method": "custom", "classes": [0, 2]}]
    checkpoints.save_model(tmp_path, CONFIG, _variables(), audit=records)
    assert checkpoints.restore_model(tmp_path).audit == records


def test_steps_accumulate_and_keep_history(tmp_path):
    first = _variables(seed=0)
    second = _variables(seed=5)
    assert checkpoints.save_model(tmp_path, CONFIG, first) == 0
    assert checkpoints.save_model(tmp_path, CONFIG, second, audit=[{"n": 1}]) == 1
    assert checkpoints.list_steps(tmp_path) == [0, 1]
    _assert_bit_identical(checkpoints.restore_model(tmp_path, step=0).variables, first)
    latest = checkpoints.restore_model(tmp_path)
    assert latest.step == 1 and latest.audit == [{"n": 1}]


@pytest.mark.parametrize(
    "save_mesh", [lambda: parallel.data_mesh(8), lambda: parallel.data_codebook_mesh(1, 8)]
)
def test_eight_device_save_restores_onto_one_device(tmp_path, save_mesh):
    variables = _variables()
    sharded = parallel.place_variables(variables, save_mesh())
    assert len(sharded["params"]["values"].sharding.device_set) == 8
    checkpoints.save_model(tmp_path, CONFIG, sharded)
    restored = checkpoints.restore_model(tmp_path)
    for leaf in jax.tree.leaves(restored.variables):
        assert leaf.sharding.device_set == {jax.local_devices()[0]}
    _assert_bit_identical(restored.variables, variables)


def test_restore_onto_another_mesh(tmp_path):
    variables = _variables()
    checkpoints.save_model(
        tmp_path, CONFIG, parallel.place_variables(variables, parallel.data_mesh(8))
    )
    mesh = parallel.data_codebook_mesh(2, 4)
    restored = checkpoints.restore_model(tmp_path, shardings=mesh)
    assert restored.variables["frozen"]["keys"].sharding.spec == jax.sharding.PartitionSpec(
        "codebook"
    )
    _assert_bit_identical(restored.variables, variables)


def test_config_mismatch_is_refused(tmp_path):
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    with pytest.raises(checkpoints.CheckpointError, match=r"num_keys: saved 16 != requested 32"):
        checkpoints.restore_model(tmp_path, config=CONFIG.replace(num_keys=32))


def _data_files(step_dir: pathlib.Path):
    return [p for p in (step_dir / "variables").rglob("*") if p.is_file() and "/d/" in str(p)]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: [p.unlink() for p in _data_files(d)], "truncated or corrupt"),
        (
            lambda d: [
                p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]) for p in _data_files(d)
            ],
            "truncated or corrupt|corrupt",
        ),
        (
            lambda d: (d / "meta" / "commit_success.txt").unlink(),
            "'meta' is missing or was not committed",
        ),
        (
            lambda d: (d / "meta" / "metadata").write_text("{not json"),
            "its metadata cannot be read",
        ),
    ],
    ids=["data-files-deleted", "data-files-truncated", "meta-uncommitted", "meta-garbage"],
)
def test_truncated_or_corrupt_checkpoint_is_refused(tmp_path, damage, match):
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    damage(tmp_path / "0")
    with pytest.raises(checkpoints.CheckpointError, match=match):
        checkpoints.restore_model(tmp_path)


def test_checksum_catches_changed_bytes(tmp_path):
    checkpoints.save_model(tmp_path, CONFIG, _variables())
    meta_file = tmp_path / "0" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["variables"]["params/values"]["sha256"] = "0" * 64  # as if the saved bytes had changed
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoints.CheckpointError, match="'params/values' does not match"):
        checkpoints.restore_model(tmp_path)
    checkpoints.restore_model(tmp_path, verify=False)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("handler", ["JsonCheckpointHandler", "StandardCheckpointHandler"])
def test_interrupted_save_leaves_no_valid_looking_checkpoint(tmp_path, monkeypatch, handler):
    good = _variables(seed=0)
    checkpoints.save_model(tmp_path, CONFIG, good)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while writing")

    cls = getattr(ocp.handlers, handler)
    for name in ("save", "async_save"):
        monkeypatch.setattr(cls, name, crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_model(tmp_path, CONFIG, _variables(seed=3))
    monkeypatch.undo()
    assert checkpoints.list_steps(tmp_path) == [0]
    assert not (tmp_path / "1").exists()
    _assert_bit_identical(checkpoints.restore_model(tmp_path).variables, good)


def test_directory_with_only_an_interrupted_save_is_refused(tmp_path):
    (tmp_path / "0.orbax-checkpoint-tmp-1234").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="incomplete saves"):
        checkpoints.restore_model(tmp_path)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda d: checkpoints.restore_model(d / "missing"), FileNotFoundError, "does not exist"),
        (
            lambda d: checkpoints.restore_model(d),
            checkpoints.CheckpointError,
            "No complete checkpoint",
        ),
        (
            lambda d: checkpoints.save_model(d, CONFIG, {"params": {}}),
            ValueError,
            "'frozen' collection",
        ),
        (
            lambda d: checkpoints.save_model(d, CONFIG.to_dict(), _variables()),
            TypeError,
            "DKVBConfig",
        ),
        (
            lambda d: checkpoints.save_model(d, CONFIG, _variables(), audit=[{"x": object()}]),
            TypeError,
            "JSON",
        ),
        (lambda d: checkpoints.restore_model(d, shardings="cpu"), TypeError, "shardings must be"),
    ],
)
def test_bad_arguments(tmp_path, call, error, match):
    if "shardings" in match:
        checkpoints.save_model(tmp_path, CONFIG, _variables())
    with pytest.raises(error, match=match):
        call(tmp_path)


@pytest.mark.slow
def test_killed_save_leaves_only_an_invisible_temporary_directory(tmp_path):
    import subprocess
    import sys

    worker = pathlib.Path(__file__).with_name("killed_save_worker.py")
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("0",)]
    assert leftovers == [".dkvb-stage-1"], leftovers  # the staging folder, not a step name
    assert checkpoints.list_steps(tmp_path) == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]  # the next access cleaned up
    assert checkpoints.restore_model(tmp_path).step == 0
