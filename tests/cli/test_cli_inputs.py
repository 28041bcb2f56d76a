"""What the command line refuses as bad input (exit 2), and how it reports its own bugs (exit 1)."""

import argparse
import re

import numpy as np
import pytest

from dkvb_jax.cli import common, embeddings, fit
from dkvb_jax.cli import main as cli
from dkvb_jax.testing import clustered_embeddings

X, Y = clustered_embeddings(0, 40, num_classes=4, dim=8)


def _npz(path, **overrides):
    arrays = {"x_train": X, "y_train": Y, "x_test": X, "y_test": Y} | overrides
    np.savez(path, **arrays)
    return path


def _text(path):
    path.write_text("x,y\n1,2\n")
    return path


def _npy(path):
    with open(path, "wb") as f:  # np.save would append .npy to the name
        np.save(f, X)
    return path


BAD_EMBEDDINGS = {
    "a text file": (_text, "is not an .npz archive"),
    "a single .npy array": (_npy, r"not an .npz archive \(a single .npy array\)"),
    "an object array": (
        lambda p: _npz(p, class_names=np.array([{"a": 1}], dtype=object)),
        r"object \(pickled\) array, which is never loaded",
    ),
    "float labels": (lambda p: _npz(p, y_train=Y + 0.7), "y_train must be integer class ids"),
    "negative labels": (lambda p: _npz(p, y_test=Y - 1), r"y_test holds labels in \[-1, 2\]"),
    "labels and rows differ": (lambda p: _npz(p, y_train=Y[:5]), "one per row of x_train"),
    "no training rows": (lambda p: _npz(p, x_train=X[:0], y_train=Y[:0]), "x_train has no rows"),
    "labels 100..103": (
        lambda p: _npz(p, y_train=Y + 100, y_test=Y + 100),
        r"training labels do not cover 0..103: 100 of these class ids have no training example "
        r"\(0, 1, 2, .*pass --num-classes 104",
    ),
    "a class only in the test split": (
        lambda p: _npz(p, y_test=np.where(Y == 3, 4, Y)),
        r"do not cover 0..4: 1 .* \(4\)",
    ),
}


@pytest.mark.parametrize("make,needle", BAD_EMBEDDINGS.values(), ids=BAD_EMBEDDINGS.keys())
def test_fit_refuses_embeddings_that_cannot_be_right(tmp_path, capsys, make, needle):
    path = make(tmp_path / "emb.npz")
    code = cli.main(["fit", "--embeddings", str(path), "--checkpoint", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == common.EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkvb fit: error: "), err
    assert re.search(needle, lines[0]), err
    assert "allow_pickle" not in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "labels, num_classes, expected",
    [
        (Y, None, 4),
        (Y + 100, 104, 104),
        (Y + 100, 200, 200),
        (Y + 100, 103, "too small"),
        (Y, 3, r"--num-classes 3 is too small: the labels reach 3"),
    ],
)
def test_num_classes_keeps_or_refuses_gaps(labels, num_classes, expected):
    emb = embeddings.Embeddings(X, labels, X, labels, {})
    args = argparse.Namespace(num_classes=num_classes)
    if isinstance(expected, int):
        assert fit._fit_num_classes(args, emb) == expected
    else:
        with pytest.raises(common.CLIError, match=expected):
            fit._fit_num_classes(args, emb)


def test_a_library_value_error_is_bad_input(tmp_path, capsys):
    code = cli.main(
        [
            "fit",
            "--embeddings",
            str(_npz(tmp_path / "e.npz")),
            "--checkpoint",
            str(tmp_path / "c"),
            "--keys",
            "0",
        ]
    )
    assert code == common.EXIT_BAD_INPUT
    assert "num_keys must be a positive int" in capsys.readouterr().err


def _raise_key_error(args, info=None):
    raise KeyError("x_train")


BUGS = {
    "a KeyError": (_raise_key_error, KeyError),
    "an AttributeError in dkvb_jax code": (lambda args, info=None: None, AttributeError),
    "a ValueError from inside numpy": (
        lambda args, info=None: embeddings.Embeddings(X[:0], Y[:0], X[:0], Y[:0], {}),
        ValueError,
    ),
}


@pytest.mark.parametrize("load,error", BUGS.values(), ids=BUGS.keys())
def test_internal_errors_are_reported_as_bugs(tmp_path, capsys, monkeypatch, load, error):
    monkeypatch.setattr(fit, "load_embeddings", load)
    argv = ["fit", "--embeddings", "unused.npz", "--checkpoint", str(tmp_path / "c")]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == common.EXIT_INTERNAL_ERROR == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"internal error ({error.__name__}" in lines[0], err
    assert "please report it" in lines[0] and "--debug" in lines[0] and "Traceback" not in err
    with pytest.raises(error):
        cli.main([*argv, "--debug"])
