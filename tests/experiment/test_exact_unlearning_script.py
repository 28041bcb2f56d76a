"""Smoke test of experiments/exact_unlearning.py: exactness and the report on tiny synthetic data."""

import copy
import json
import pathlib

import numpy as np
import pytest
from script_testutil import load_script

TINY = ["--num-codebooks", "8", "--num-keys", "16", "--key-dim", "4", "--max-train", "1000"]
ROWS = [
    "test accuracy, closed-form values (selected estimator)",
    "test accuracy, SGD-trained values on the same keys",
    "forget best class: forget-test before -> after (oracle)",
    "forget best class: retain-test before -> after (oracle)",
    "time per class request",
    "forget random 1% of D: MIA before -> after (oracle)",
    "forget random 10% of D: MIA before -> after (oracle)",
    "time per sample-level request",
    "5 sequential requests == one request of their union",
]


@pytest.fixture(scope="module")
def ex():
    return load_script("experiments/exact_unlearning.py", "exact_unlearning")


@pytest.fixture(scope="module")
def run(ex, tmp_path_factory):
    """One synthetic run: (output folder, returned results)."""
    out = tmp_path_factory.mktemp("exact")
    argv = ["--synthetic", *TINY, "--key-epochs", "1", "--sgd-epochs", "1", "--sequential", "5"]
    return out, ex.main([*argv, "--out", str(out)])


def test_json_per_dataset(run):
    out, results = run
    assert list(results) == ["synthetic"]
    saved = json.loads((out / "exact_synthetic.json").read_text())
    assert saved == json.loads(json.dumps(results["synthetic"]))
    assert set(saved["machine"]) == {"load", "cpu_count", "platform", "jax"}


def test_every_request_is_exact(run):
    saved = json.loads((run[0] / "exact_synthetic.json").read_text())
    cf, samples = saved["class_forgetting"], saved["sample_forgetting"]
    assert [s["fraction"] for s in samples] == [0.01, 0.1]
    assert cf["bit_identical_to_oracle"] and cf["exact_record"]
    assert all(s["bit_identical_to_oracle"] and s["exact_record"] for s in samples)
    assert saved["sequential"]["bit_identical_to_union"]
    assert saved["sequential"]["requests"] == 5
    assert cf["after"]["forget_test"] == 0.0 and cf["after"]["forget_train"] == 0.0


def _table(text: str) -> tuple[str, dict[str, str]]:
    lines = text.splitlines()
    return lines[0], {line.split(" | ")[0][2:]: line for line in lines[2:]}


@pytest.mark.parametrize("row", ROWS)
def test_results_md_has_row(run, row):
    header, rows = _table((run[0] / "results.md").read_text())
    assert header == "| | synthetic |"
    assert rows[row].count("|") == header.count("|")


def test_to_markdown_one_column_per_dataset(ex, run):
    second = copy.deepcopy(run[1]["synthetic"])
    second["sequential"]["bit_identical_to_union"] = False  # the table must not hide a failure
    header, rows = _table(ex.to_markdown({"mobilenet_v1": run[1]["synthetic"], "other": second}))
    assert header == "| | MobileNetV1 | other |"
    assert list(rows) == ROWS
    assert all(line.count("|") == 4 for line in rows.values())
    first, second = rows[ROWS[-1]].split(" | ")[1:]
    assert first.startswith("bit-identical") and second.startswith("NOT bit-identical")


def _cache(root: pathlib.Path, encoders: list[str]) -> pathlib.Path:
    """A tiny embedding cache holding train and test entries of ``encoders``."""
    root.mkdir(parents=True)
    for encoder in encoders:
        for split in ("train", "test"):
            d = root / f"{encoder}-{split}"
            d.mkdir()
            (d / "manifest.json").write_text(
                json.dumps({"key": {"encoder": encoder, "split": split}})
            )
            np.save(d / "embeddings.npy", np.zeros((4, 3), np.float32))
            np.save(d / "labels.npy", np.arange(4))
    return root


@pytest.mark.parametrize(
    "cached, match",
    [
        (None, r"--cache-dir .*missing does not exist"),
        ([], "No embedding-cache entries"),
        # The second encoder is missing: this must fail before the first one is measured.
        (["mobilenet_v1"], "No embedding-cache entries .*'cifar_resnet20'"),
    ],
)
def test_missing_cache_entries_are_named(ex, tmp_path, cached, match):
    root = tmp_path / "missing"
    if cached is not None:
        _cache(root, cached)
    with pytest.raises(FileNotFoundError, match=match):
        ex.main(["--cache-dir", str(root), "--out", str(tmp_path / "out")])


def test_cache_mode_one_dataset_per_encoder(ex, tmp_path):
    root = _cache(tmp_path / "cache", ["mobilenet_v1", "cifar_resnet20"])
    found = ex.datasets(ex.parse_args(["--cache-dir", str(root)]))
    assert [d.name for d in found] == ["mobilenet_v1", "cifar_resnet20"]
    assert [d.args.encoder for d in found] == ["mobilenet_v1", "cifar_resnet20"]
    x_tr, y_tr, x_te, y_te = found[1].load()
    assert x_tr.shape == x_te.shape == (4, 3) and list(y_tr) == list(y_te) == [0, 1, 2, 3]
