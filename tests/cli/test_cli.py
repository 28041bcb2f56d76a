"""The dkvb command line on tiny synthetic embeddings: outputs, written files, and bad input."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dkvb_jax.cli.main import build_parser, main
from dkvb_jax.experiment import load_fitted
from dkvb_jax.testing import clustered_embeddings

# Trained values: the masking workflow, value settings and the resume state of value training
# (the tests at the end cover the certified default recipe).
TINY = [
    "--codebooks",
    "8",
    "--keys",
    "32",
    "--key-dim",
    "4",
    "--key-epochs",
    "2",
    "--value-epochs",
    "5",
    "--recipe",
    "lda_adam",
    "--no-progress",
]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    x, y = clustered_embeddings(0, 400, num_classes=4, dim=16)
    xt, yt = clustered_embeddings(1, 160, num_classes=4, dim=16)
    path = tmp_path_factory.mktemp("data") / "emb.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(npz, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "model"
    assert main(["fit", "--embeddings", npz, "--checkpoint", str(ckpt), *TINY]) == 0
    return ckpt


def test_fit_json(npz, checkpoint, capsys):
    # A rerun restores the checkpoint instead of fitting again.
    code, out, _ = run(
        capsys, "fit", "--embeddings", npz, "--checkpoint", str(checkpoint), *TINY, "--json"
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["config"]["num_keys"] == 32 and payload["test_acc"] > 0.9
    assert payload["restored"] is True
    assert (checkpoint / "usage.npy").is_file() and (checkpoint / "run.json").is_file()


@pytest.mark.parametrize("method", ["uva", "uve", "exact"])
def test_unlearn_writes_checkpoint_with_audit(npz, checkpoint, tmp_path, capsys, method):
    # Without --n, uva/uve take the smallest N that forgets the class's training examples.
    out_dir = tmp_path / "forgot"
    extra = []
    code, out, err = run(
        capsys,
        "unlearn",
        "--checkpoint",
        str(checkpoint),
        "--classes",
        "2",
        "--method",
        method,
        *extra,
        "--out",
        str(out_dir),
        "--json",
        "--no-progress",
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["audit"]["forgotten_classes"] == [2]
    assert payload["audit"]["effect"]["after"]["forget_accuracy"] == 0.0
    code, out, _ = run(capsys, "evaluate", "--checkpoint", str(out_dir), "--json", "--no-progress")
    ev = json.loads(out)
    assert ev["forgotten_classes"] == [2] and ev["audit_records"] == 1
    assert ev["forget_test_acc"] == 0.0 and ev["retain_test_acc"] > 0.9
    assert 0 <= ev["mia"]["accuracy"] <= 1


def test_unlearn_examples_and_table(npz, checkpoint, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "unlearn",
        "--checkpoint",
        str(checkpoint),
        "--examples",
        "0,1,2",
        "--method",
        "uve",
        "--out",
        str(tmp_path / "ex"),
        "--no-progress",
    )
    assert code == 0, err
    assert "| before" in out and "audit record" in out


@pytest.mark.parametrize(
    "option, named",
    [
        (["--value-epochs", "6"], "value_config.epochs: saved 5, requested 6"),
        (["--lr", "0.1"], "value_config.learning_rate: saved 0.5, requested 0.1"),
        (["--seed", "3"], "key.data: saved [0, 0], requested [0, 3]"),
        (["--preprocess", "standardize"], 'preprocess: saved "lda", requested "standardize"'),
    ],
)
def test_fit_into_a_folder_fitted_with_other_settings_is_refused(
    npz, checkpoint, capsys, option, named
):
    argv = ["fit", "--embeddings", npz, "--checkpoint", str(checkpoint), *TINY, *option]
    _one_line_error(capsys, argv, named)


def _unlearn(capsys, folder, *extra):
    argv = ["unlearn", "--checkpoint", str(folder), "--classes", "2", "--method", "uva"]
    code, out, err = run(capsys, *argv, "--n", "2", "--no-progress", *extra)
    assert code == 0, err
    return out


def test_unlearn_says_which_steps_still_hold_the_data(checkpoint, tmp_path, capsys):
    from dkvb_jax import checkpoints

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    out = _unlearn(capsys, folder)
    held = f"step 0 of {folder / 'model'}, {folder / 'keys'}, {folder / 'values'} still hold"
    assert f"{held} the forgotten data; unlearn with --purge-earlier to delete them" in out
    payload = json.loads(_unlearn(capsys, folder, "--json"))
    assert payload["step"] == 2 and payload["purged_steps"] == []
    assert payload["still_holding"]["model_steps"] == [0, 1]
    assert checkpoints.list_steps(folder / "model") == [0, 1, 2]


def test_unlearn_purge_earlier_deletes_and_records_it(checkpoint, tmp_path, capsys):
    from dkvb_jax import checkpoints

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    _unlearn(capsys, folder)
    payload = json.loads(_unlearn(capsys, folder, "--purge-earlier", "--json"))
    assert payload["purged_steps"] == [0, 1]
    assert payload["purged_folders"] == [str(folder / "keys"), str(folder / "values")]
    assert payload["still_holding"]["model_steps"] == []
    assert payload["still_holding"]["folders"] == []
    assert checkpoints.list_steps(folder / "model") == [2]
    assert not (folder / "keys").exists() and not (folder / "values").exists()
    assert checkpoints.restore_model(folder / "model").purged_steps == (0, 1)
    code, out, _ = run(capsys, "evaluate", "--checkpoint", str(folder), "--json", "--no-mia")
    assert code == 0 and json.loads(out)["audit_records"] == 2


def test_unlearn_out_says_the_source_still_holds_the_data(checkpoint, tmp_path, capsys):
    out = _unlearn(capsys, checkpoint, "--out", str(tmp_path / "new"))
    assert f"the --checkpoint folder {checkpoint} is unchanged and still holds" in out


def test_compare_writes_table_json_and_plots(npz, tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    code, out, err = run(
        capsys,
        "compare",
        "--embeddings",
        npz,
        *TINY,
        "--baselines",
        "finetune",
        "--baseline-max-epochs",
        "2",
        "--head-epochs",
        "3",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    assert "| DKVB-UvA" in out and "| finetune" in out
    saved = json.loads((out_dir / "results.json").read_text())
    assert {"reference", "meta", "rows", "summary"} <= set(saved)
    for rec in saved["summary"]:
        assert set(rec) == {
            "method",
            "retain_test_acc",
            "retain_train_acc",
            "forget_test_acc",
            "mia",
            "mia_std",
            "mia_n_per_side",
            "mia_within_noise",
            "wall_s",
            "gflops",
            "reached",
            "cost_vs_dkvb",
        }
    assert len((out_dir / "results.csv").read_text().splitlines()) == 1 + len(saved["rows"])
    for png in ("sweep_uva", "sweep_uve", "accuracy_vs_cost", "per_class"):
        assert (out_dir / f"{png}.png").stat().st_size > 1000


def _one_line_error(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "--embeddings", "/nope.npz", "--checkpoint", "/tmp/x"], "no such file"),
        (["fit", "--dataset", "mnist", "--checkpoint", "/tmp/x"], "unknown dataset"),
        (["fit", "--encoder", "vgg", "--checkpoint", "/tmp/x"], "unknown encoder"),
        (["evaluate", "--checkpoint", "/nope"], "not a dkvb checkpoint"),
        (["compare", "--config", "/nope.json", "--out", "/tmp/x"], "no such file"),
    ],
)
def test_bad_input_one_line(capsys, argv, needle):
    _one_line_error(capsys, argv, needle)


def test_bad_checkpoint_inputs(npz, checkpoint, capsys, tmp_path):
    _one_line_error(
        capsys,
        ["unlearn", "--checkpoint", str(checkpoint), "--classes", "9"],
        "outside the model's 4 classes",
    )
    # Another configuration into the same checkpoint folder is refused.
    argv = ["fit", "--embeddings", npz, "--checkpoint", str(checkpoint), *TINY, "--keys", "16"]
    _one_line_error(capsys, argv, "model_config.num_keys: saved 32, requested 16")
    # Embeddings of another encoder (other dimension) are refused.
    other = tmp_path / "other.npz"
    x, y = clustered_embeddings(0, 50, num_classes=4, dim=8)
    np.savez(other, x_train=x, y_train=y, x_test=x, y_test=y)
    _one_line_error(
        capsys,
        ["evaluate", "--checkpoint", str(checkpoint), "--embeddings", str(other)],
        "another encoder",
    )


def test_unknown_method_is_rejected_by_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["unlearn", "--checkpoint", "x", "--classes", "1", "--method", "magic"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["embed", "fit", "unlearn", "evaluate", "compare", "demo"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_python_m_entry_point():
    res = subprocess.run(
        [sys.executable, "-m", "dkvb_jax", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "demo" in res.stdout


def test_embed_folder_then_cache(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(d / f"{i}.png")
    argv = [
        "embed",
        "--encoder",
        "cifar_resnet20",
        "--dataset",
        "folder",
        "--data-dir",
        str(tmp_path / "imgs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "| train" in out and "encoded" in out
    code, out, _ = run(capsys, *argv, "--json")
    payload = json.loads(out)
    assert payload["splits"]["train"] == payload["splits"]["train"] | {
        "examples": 4,
        "dim": 64,
        "from_cache": True,
    }


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny named dataset (the 'folder' dataset): 3 classes of 40 train and 10 test images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        for c, name in enumerate(("a", "b", "c")):
            d = root / "imgs" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                tint = np.zeros(3)
                tint[c] = 120  # each class has its own colour cast, so it can be learned
                img = np.clip(rng.normal(100, 40, (32, 32, 3)) + tint, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return [
        "--encoder",
        "cifar_resnet20",
        "--dataset",
        "folder",
        "--data-dir",
        str(root / "imgs"),
        "--cache-dir",
        str(root / "cache"),
    ]


SMALL = "--codebooks 4 --keys 8 --key-dim 4 --key-epochs 1 --value-epochs 1 --no-progress".split()


@pytest.fixture(scope="module")
def certified_fit(image_folder, tmp_path_factory):
    """One fit of the certified recipe on the image folder; each test unlearns from a copy."""
    ckpt = tmp_path_factory.mktemp("certified") / "ckpt"
    argv = ["fit", *image_folder, *SMALL, "--recipe", "certified", "--checkpoint", str(ckpt)]
    assert main(argv) == 0
    return ckpt


def _fit(image_folder, certified_fit, tmp_path, capsys, recipe="certified") -> str:
    ckpt = tmp_path / "ckpt"
    if recipe == "certified":
        shutil.copytree(certified_fit, ckpt)
    else:
        argv = ["fit", *image_folder, *SMALL, "--recipe", recipe, "--checkpoint", str(ckpt)]
        code, _, err = run(capsys, *argv)
        assert code == 0, err
    return str(ckpt)


@pytest.mark.parametrize(
    "recipe, certified, named",
    [("certified", True, ()), ("paper", False, ("the preprocess (", "the keys ("))],
)
def test_unlearn_certificate_comes_from_what_the_fit_recorded(
    image_folder, certified_fit, tmp_path, capsys, recipe, certified, named
):
    ckpt = _fit(image_folder, certified_fit, tmp_path, capsys, recipe)
    code, out, err = run(
        capsys,
        "unlearn",
        *image_folder,
        "--checkpoint",
        ckpt,
        "--classes",
        "1",
        "--method",
        "exact",
        "--no-progress",
    )
    assert code == 0, err
    line = next(s for s in out.splitlines() if "certified" in s)
    assert line.startswith("certified exact:" if certified else "NOT certified:")
    for part in named:
        assert part in line
    # No flag can grant a certificate.
    with pytest.raises(SystemExit) as exit_:
        main(
            ["unlearn", *image_folder, "--checkpoint", ckpt, "--classes", "2", "--keys-independent"]
        )
    assert exit_.value.code == 2 and "--keys-independent" in capsys.readouterr().err


def test_certified_model_forgets_examples_from_its_statistics(
    image_folder, certified_fit, tmp_path, capsys
):
    ckpt = _fit(image_folder, certified_fit, tmp_path, capsys)
    settings = json.loads((tmp_path / "ckpt" / "run.json").read_text())["fit_settings"]
    assert settings["values"] == "EstimatorConfig"
    (held_rows,) = load_fitted(ckpt)[0].provenance.part("preprocess").rows
    held = int(held_rows.ids[0])
    counted = int(np.setdiff1d(np.arange(120), held_rows.ids)[0])
    # --examples defaults to the exact removal on a model with closed-form values.
    code, out, err = run(
        capsys,
        "unlearn",
        *image_folder,
        "--checkpoint",
        ckpt,
        "--examples",
        str(counted),
        "--json",
        "--no-progress",
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["method"] == "exact" and payload["audit"]["certificate"]["certified"]
    assert payload["audit"]["forgotten_examples"] == [counted]
    assert payload["still_holding"]["usage"] is None  # recounted without the forgotten row
    code, _, err = run(
        capsys,
        "unlearn",
        *image_folder,
        "--checkpoint",
        ckpt,
        "--examples",
        str(held),
        "--no-progress",
    )
    assert code == 2 and "held-out split" in err


def test_unlearn_sweeps_the_fits_grid_on_a_bounded_subset(npz, tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    assert (
        run(
            capsys,
            "fit",
            "--embeddings",
            npz,
            "--checkpoint",
            ckpt,
            *TINY,
            "--set",
            "n_a_grid=[2,4]",
            "sweep_max_examples=30",
        )[0]
        == 0
    )
    code, out, err = run(
        capsys,
        "unlearn",
        "--embeddings",
        npz,
        "--checkpoint",
        ckpt,
        "--classes",
        "1",
        "--method",
        "uva",
        "--no-progress",
    )
    assert code == 0, err
    assert "sweeping UvA n_a over [2, 4] on 60 training rows" in err
    assert "uva (N=2)" in out or "uva (N=4)" in out


def test_evaluate_refuses_another_encoder_before_encoding(
    image_folder, certified_fit, tmp_path, capsys
):
    ckpt = _fit(image_folder, certified_fit, tmp_path, capsys)
    other = [a if a != "cifar_resnet20" else "mobilenet_v1" for a in image_folder]
    code, _, err = run(capsys, "evaluate", *other, "--checkpoint", ckpt, "--no-progress")
    assert code == 2 and "reads cifar_resnet20 embeddings" in err
    cache = pathlib.Path(image_folder[image_folder.index("--cache-dir") + 1])
    assert not [p for p in cache.iterdir() if "mobilenet" in p.name]  # nothing was encoded
