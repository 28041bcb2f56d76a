"""Where a command's embeddings come from: a cached encoder run or an NPZ file."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any

from dkvb_jax.cli.common import CLIError
from dkvb_jax.data.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Train / test embeddings and where they came from."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    source: dict
    class_names: tuple[str, ...] = ()
    ids_train: Any = None


def encoder_names() -> list[str]:
    from dkvb_jax.encoders import list_encoders

    return list(list_encoders())


def read_embeddings_npz(path: str) -> Embeddings:
    import numpy as np

    from dkvb_jax.encoders._weights import load_npz

    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--embeddings {path}: no such file.")
    arrays = load_npz(p, what="--embeddings")
    missing = sorted({"x_train", "y_train", "x_test", "y_test"} - set(arrays))
    if missing:
        raise CLIError(
            f"--embeddings {path} lacks arrays {missing}; it needs x_train, y_train, x_test, "
            "y_test."
        )
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape[:1] == (0,):
            raise CLIError(f"--embeddings {path}: x_{split} has no rows.")
        numeric = np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
        if x.ndim != 2 or not numeric:
            raise CLIError(
                f"--embeddings {path}: x_{split} must be a numeric [examples, dim] array, got "
                f"{x.dtype} of shape {x.shape}."
            )
        # A float label array would be truncated to int silently (1.7 -> class 1).
        if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
            raise CLIError(
                f"--embeddings {path}: y_{split} must be integer class ids, one per row of "
                f"x_{split} ({x.shape[0]}), got {y.dtype} of shape {y.shape}."
            )
        if y.size and not (y.min() >= 0 and y.max() < 2**31):
            raise CLIError(
                f"--embeddings {path}: y_{split} holds labels in [{y.min()}, {y.max()}]; class "
                "ids are 0, 1, 2, ..."
            )
    names = tuple(str(n) for n in arrays.get("class_names", ()))
    return Embeddings(
        arrays["x_train"].astype("float32"),
        arrays["y_train"].astype("int32"),
        arrays["x_test"].astype("float32"),
        arrays["y_test"].astype("int32"),
        {"embeddings": str(p)},
        names,
        arrays.get("ids_train"),
    )


def load_embeddings(args: argparse.Namespace, info: dict | None = None) -> Embeddings:
    """The run's embeddings: ``--embeddings`` NPZ, or encoder + dataset through the cache.

    `info` (a checkpoint's ``run.json``) fills in what the arguments leave unset.
    """
    info = info or {}
    npz = getattr(args, "embeddings", None) or (
        info.get("embeddings") if getattr(args, "dataset", None) is None else None
    )
    if npz:
        return read_embeddings_npz(npz)
    from dkvb_jax.embedding import embed_dataset

    fitted_on = info.get("encoder")
    if args.encoder and fitted_on and args.encoder != fitted_on:
        # Checked before anything is encoded: a mismatch would only show after a full pass.
        raise CLIError(
            f"--encoder {args.encoder} does not match the checkpoint, which reads {fitted_on} "
            f"embeddings; drop --encoder or pass --encoder {fitted_on}."
        )
    encoder = args.encoder or fitted_on or "mobilenet_v1"
    dataset = args.dataset or info.get("dataset") or "cifar10_sample"
    data_dir = args.data_dir if args.data_dir is not None else info.get("data_dir")
    check_names(encoder, dataset)
    splits = {}
    for split in ("train", "test"):
        splits[split] = embed_dataset(
            encoder,
            dataset,
            split,
            data_dir=data_dir,
            cache_dir=embedding_cache_dir(args),
            progress=not args.no_progress,
        )
    tr, te = splits["train"], splits["test"]
    return Embeddings(
        tr.embeddings.astype("float32"),
        tr.labels,
        te.embeddings.astype("float32"),
        te.labels,
        {"encoder": encoder, "dataset": dataset, "data_dir": data_dir},
        tuple(tr.class_names),
        tr.ids,
    )


def check_names(encoder: str, dataset: str) -> None:
    if dataset not in DATASETS:
        raise CLIError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}.")
    known = encoder_names()
    if encoder not in known:
        raise CLIError(f"unknown encoder {encoder!r}; known: {', '.join(known)}.")


def embedding_cache_dir(args) -> pathlib.Path:
    return pathlib.Path(args.cache_dir).expanduser()


def key_data_of(args, emb: Embeddings):
    """Unlabelled embeddings for the keys: another dataset (``--key-dataset``) or None."""
    if not getattr(args, "key_dataset", None):
        return None
    from dkvb_jax.embedding import embed_dataset

    encoder = emb.source.get("encoder")
    if encoder is None:
        raise CLIError("--key-dataset needs --encoder/--dataset input (not --embeddings).")
    check_names(encoder, args.key_dataset)
    return embed_dataset(
        encoder,
        args.key_dataset,
        "train",
        data_dir=args.key_data_dir,
        cache_dir=embedding_cache_dir(args),
        progress=not args.no_progress,
    ).embeddings.astype("float32")


def train_namespace(emb: Embeddings) -> str | None:
    """The provenance namespace of the training rows (None for an unnamed --embeddings file)."""
    from dkvb_jax.data.registry import row_namespace

    dataset = emb.source.get("dataset")
    return None if dataset is None else row_namespace(dataset, "train")


def key_rows_of(args):
    """The rows of --key-dataset (every row of its training split), for the provenance."""
    if not getattr(args, "key_dataset", None):
        return None
    from dkvb_jax.data.registry import row_namespace
    from dkvb_jax.provenance import Rows

    return Rows(row_namespace(args.key_dataset, "train"))
