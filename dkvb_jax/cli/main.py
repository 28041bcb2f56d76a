"""dkvb: the command line of dkvb_jax (embed, fit, unlearn, evaluate, compare, demo).

    dkvb demo                                   # fit, forget one class, compare; offline
    dkvb embed   --encoder mobilenet_v1 --dataset cifar10 --data-dir ../shared/data/cifar10
    dkvb fit     --dataset cifar10_sample --checkpoint ckpt/
    dkvb unlearn --checkpoint ckpt/ --classes 3 --method uva
    dkvb evaluate --checkpoint ckpt/
    dkvb compare --dataset cifar10 --data-dir ../shared/data/cifar10 --out results/

Every command prints a readable table, or JSON with --json. fit, compare and demo take
--set FIELD=VALUE ... to change any field of the experiment config (e.g. --set value_epochs=6
n_a_grid=[8,16,32]). Bad input ends with one line on stderr and exit status 2; anything else is
a bug and ends with one line asking for a report and exit status 1. --debug shows the traceback
of either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import linecache
import logging
import os
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

from dkvb_jax import __version__
from dkvb_jax.data.registry import DATASETS
from dkvb_jax.embedding import DEFAULT_CACHE_DIR
from dkvb_jax.errors import InputError
from dkvb_jax.model.preprocess import KINDS
from dkvb_jax.unlearning.registry import METHODS

# ExperimentConfig's recipes (dkvb_jax.experiment.RECIPES), named here so that building the
# parser needs no experiment module; a test keeps the two equal.
RECIPE_CHOICES = ("certified", "default", "lda_adam", "paper")

EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 1
_PACKAGE_DIR = os.path.realpath(pathlib.Path(__file__).parents[1])


class CLIError(InputError):
    """A user error the command line reports in one line."""


# ----------------------------------------------------------------------------- data


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


def _encoders() -> list[str]:
    from dkvb_jax.encoders import list_encoders

    return list(list_encoders())


def _load_npz(path: str) -> Embeddings:
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
        arrays["x_train"].astype("float32"), arrays["y_train"].astype("int32"),
        arrays["x_test"].astype("float32"), arrays["y_test"].astype("int32"),
        {"embeddings": str(p)}, names, arrays.get("ids_train"),
    )  # fmt: skip


def load_embeddings(args: argparse.Namespace, info: dict | None = None) -> Embeddings:
    """The run's embeddings: ``--embeddings`` NPZ, or encoder + dataset through the cache.

    `info` (a checkpoint's ``run.json``) fills in what the arguments leave unset.
    """
    info = info or {}
    npz = getattr(args, "embeddings", None) or (
        info.get("embeddings") if getattr(args, "dataset", None) is None else None
    )
    if npz:
        return _load_npz(npz)
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
    _check_names(encoder, dataset)
    splits = {}
    for split in ("train", "test"):
        splits[split] = embed_dataset(
            encoder, dataset, split, data_dir=data_dir, cache_dir=_cache_dir(args),
            progress=not args.no_progress,
        )  # fmt: skip
    tr, te = splits["train"], splits["test"]
    return Embeddings(
        tr.embeddings.astype("float32"), tr.labels, te.embeddings.astype("float32"), te.labels,
        {"encoder": encoder, "dataset": dataset, "data_dir": data_dir},
        tuple(tr.class_names), tr.ids,
    )  # fmt: skip


def _check_names(encoder: str, dataset: str) -> None:
    if dataset not in DATASETS:
        raise CLIError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}.")
    known = _encoders()
    if encoder not in known:
        raise CLIError(f"unknown encoder {encoder!r}; known: {', '.join(known)}.")


def _cache_dir(args) -> pathlib.Path:
    return pathlib.Path(args.cache_dir).expanduser()


def _key_data(args, emb: Embeddings):
    """Unlabelled embeddings for the keys: another dataset (``--key-dataset``) or None."""
    if not getattr(args, "key_dataset", None):
        return None
    from dkvb_jax.embedding import embed_dataset

    encoder = emb.source.get("encoder")
    if encoder is None:
        raise CLIError("--key-dataset needs --encoder/--dataset input (not --embeddings).")
    _check_names(encoder, args.key_dataset)
    return embed_dataset(
        encoder, args.key_dataset, "train", data_dir=args.key_data_dir,
        cache_dir=_cache_dir(args), progress=not args.no_progress,
    ).embeddings.astype("float32")  # fmt: skip


def _train_namespace(emb: Embeddings) -> str | None:
    """The provenance namespace of the training rows (None for an unnamed --embeddings file)."""
    from dkvb_jax.data.registry import row_namespace

    dataset = emb.source.get("dataset")
    return None if dataset is None else row_namespace(dataset, "train")


def _key_rows(args):
    """The rows of --key-dataset (every row of its training split), for the provenance."""
    if not getattr(args, "key_dataset", None):
        return None
    from dkvb_jax.data.registry import row_namespace
    from dkvb_jax.provenance import Rows

    return Rows(row_namespace(args.key_dataset, "train"))


# ----------------------------------------------------------------------------- output


def _emit(args, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".4g")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


# ----------------------------------------------------------------------------- config


def _read_config(args) -> dict:
    if not getattr(args, "config", None):
        return {}
    p = pathlib.Path(args.config)
    if not p.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"--config {args.config} is not valid JSON ({e}).") from e


def apply_config_defaults(args) -> None:
    """Fills --encoder/--dataset/--data-dir/--key-dataset from the --config file when unset."""
    loaded = _read_config(args)
    if getattr(args, "embeddings", None):
        return
    for name in ("encoder", "dataset", "data_dir", "key_dataset"):
        if getattr(args, name, None) is None and loaded.get(name) is not None:
            setattr(args, name, loaded[name])


# ExperimentConfig field (or "recipe") of each flag that sets one; flags a command lacks are unset.
_CONFIG_FLAGS = {
    "codebooks": "num_codebooks",
    "keys": "num_keys",
    "key_dim": "key_dim",
    "top_k": "top_k",
    "key_epochs": "key_epochs",
    "value_epochs": "value_epochs",
    "lr": "value_learning_rate",
    "seed": "seed",
    "recipe": "recipe",
    "preprocess": "preprocess",
    "forget_classes": "forget_classes",
    "baselines": "baselines",
    "methods": "methods",
    "head_epochs": "head_epochs",
    "baseline_max_epochs": "baseline_max_epochs",
}


def experiment_config(args, base: dict | None = None) -> Any:
    """The run's ExperimentConfig: `base` (default: the ``--config`` JSON), then the flags,
    then ``--set FIELD=VALUE`` overrides, each later one winning."""
    from dkvb_jax.experiment import ExperimentConfig
    from dkvb_jax.experiment.class_unlearning import parse_overrides

    if base is None:
        loaded = _read_config(args)
        base = dict(loaded.get("experiment", loaded)) if loaded else {}
    settings = dict(base)
    for flag, field in _CONFIG_FLAGS.items():
        if getattr(args, flag, None) is not None:
            settings[field] = getattr(args, flag)
    if getattr(args, "no_mia", False):
        settings["mia"] = False
    cfg = ExperimentConfig.from_dict(settings)
    assignments = getattr(args, "overrides", None)
    if not assignments:
        return cfg
    # Built apart from the rest, so that an error here is the --set's and says so.
    try:
        return cfg.replace(**parse_overrides(assignments))
    except (TypeError, ValueError) as e:
        raise CLIError(f"--set {' '.join(assignments)}: {e}") from e


# ----------------------------------------------------------------------------- commands


def cmd_embed(args) -> int:
    from dkvb_jax.embedding import embed_dataset

    encoder = args.encoder or "mobilenet_v1"
    dataset = args.dataset or "cifar10_sample"
    _check_names(encoder, dataset)
    out, rows = {}, []
    for split in args.splits:
        start = time.perf_counter()
        c = embed_dataset(encoder, dataset, split, data_dir=args.data_dir,
                          cache_dir=_cache_dir(args), rebuild=args.rebuild,
                          progress=not args.no_progress)  # fmt: skip
        secs = time.perf_counter() - start
        out[split] = {"examples": int(c.embeddings.shape[0]), "dim": int(c.embeddings.shape[1]),
                      "from_cache": c.from_cache, "seconds": secs, "path": str(c.path)}  # fmt: skip
        rows.append([split, c.embeddings.shape[0], c.embeddings.shape[1],
                     "cache" if c.from_cache else f"encoded ({c.embeddings.shape[0] / secs:.1f} img/s)",
                     f"{secs:.1f}", str(c.path)])  # fmt: skip
    _emit(args, {"encoder": encoder, "dataset": dataset, "splits": out},
          _table(rows, ["split", "examples", "dim", "source", "seconds", "cache entry"]))  # fmt: skip
    return 0


def _accuracies(fitted, emb: Embeddings) -> dict:
    import jax.numpy as jnp

    from dkvb_jax.evaluation import accuracy, per_class_accuracy

    apply = fitted.model.apply
    v = fitted.variables
    return {
        "train_acc": accuracy(apply, v, jnp.asarray(emb.x_train), jnp.asarray(emb.y_train)),
        "test_acc": accuracy(apply, v, jnp.asarray(emb.x_test), jnp.asarray(emb.y_test)),
        "per_class_test_acc": per_class_accuracy(
            apply, v, jnp.asarray(emb.x_test), jnp.asarray(emb.y_test)
        ),
    }


def _fit_num_classes(args, emb: Embeddings) -> int:
    """The model's classes: ``--num-classes``, or 0..max label when the training set has each.

    Labels 100..104 alone would otherwise give a 105-class model, 100 of its classes never
    seen; refusing is safer than guessing, and ``--num-classes`` keeps such ids on purpose.
    """
    import numpy as np

    seen = int(max(emb.y_train.max(), emb.y_test.max())) + 1
    if args.num_classes is not None:
        if args.num_classes < seen:
            raise CLIError(
                f"--num-classes {args.num_classes} is too small: the labels reach {seen - 1}, "
                f"so the model needs at least {seen} classes (ids 0..{seen - 1})."
            )
        return args.num_classes
    absent = np.setdiff1d(np.arange(seen), emb.y_train)
    if absent.size:
        shown = ", ".join(map(str, absent[:10].tolist())) + (", ..." if absent.size > 10 else "")
        raise CLIError(
            f"the training labels do not cover 0..{seen - 1}: {absent.size} of these class ids "
            f"have no training example ({shown}). Relabel the classes to 0..k-1, or pass "
            f"--num-classes {seen} to keep these ids."
        )
    return seen


def cmd_fit(args) -> int:
    from dkvb_jax.experiment.recipe import fit_from_config

    apply_config_defaults(args)
    cfg = experiment_config(args)
    emb = load_embeddings(args)
    num_classes = _fit_num_classes(args, emb)
    model_cfg = cfg.dkvb_config(emb.x_train.shape[1], num_classes)
    info = {**emb.source, "experiment": cfg.to_dict(), "class_names": list(emb.class_names)}
    if args.key_dataset:
        info["key_dataset"] = args.key_dataset
    key_data = _key_data(args, emb)
    start = time.perf_counter()
    fitted = fit_from_config(
        cfg, emb.x_train, emb.y_train, num_classes=num_classes, dataset=_train_namespace(emb),
        key_data=key_data, key_rows=_key_rows(args),
        checkpoint_dir=args.checkpoint, encoder=emb.source.get("encoder"), run_info=info,
        progress=not args.no_progress,
    ).fitted  # fmt: skip
    secs = time.perf_counter() - start
    acc = _accuracies(fitted, emb)
    payload = {"checkpoint": str(args.checkpoint), "config": model_cfg.to_dict(), "seconds": secs,
               **{k: acc[k] for k in ("train_acc", "test_acc")},
               "per_class_test_acc": acc["per_class_test_acc"]}  # fmt: skip
    text = _table(
        [[model_cfg.num_codebooks, model_cfg.num_keys, model_cfg.key_dim,
          _pct(acc["train_acc"]), _pct(acc["test_acc"]), f"{secs:.1f}"]],
        ["codebooks", "keys", "key dim", "train acc (%)", "test acc (%)", "seconds"],
    ) + f"\ncheckpoint: {args.checkpoint}"  # fmt: skip
    if fitted.history is None:
        text += " (already fitted with these settings: restored, not refitted)"
    payload["restored"] = fitted.history is None
    _emit(args, payload, text)
    return 0


def _parse_ids(spec: str) -> list[int]:
    if spec.startswith("@"):
        p = pathlib.Path(spec[1:])
        if not p.is_file():
            raise FileNotFoundError(f"--examples {spec}: no such file.")
        spec = p.read_text().replace("\n", ",")
    try:
        return [int(s) for s in spec.replace(" ", ",").split(",") if s.strip()]
    except ValueError as e:
        raise CLIError(
            f"--examples must be comma-separated integer ids or @file, got {spec!r}."
        ) from e


def _forget_rows(emb: Embeddings, ids: list[int]):
    """Row indices of the named training example ids (ids from the cache, or row numbers)."""
    import numpy as np

    ids_arr = np.asarray(ids, np.int64)
    if emb.ids_train is None:
        known = np.arange(emb.x_train.shape[0])
    else:
        known = np.asarray(emb.ids_train, np.int64)
    pos = {int(v): i for i, v in enumerate(known)}
    missing = [int(i) for i in ids_arr if int(i) not in pos]
    if missing:
        raise CLIError(
            f"--examples ids {missing[:10]} are not training examples of this dataset "
            f"(ids range {known.min()}..{known.max()})."
        )
    return np.asarray([pos[int(i)] for i in ids_arr])


def cmd_unlearn(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from dkvb_jax.experiment import load_fitted, save_fitted
    from dkvb_jax.experiment.fitting import FittedDKVB, earlier_state
    from dkvb_jax.unlearning import accuracy_effect, get_method, sweep, unlearn

    if (args.classes is None) == (args.examples is None):
        raise CLIError("give exactly one of --classes or --examples.")
    fitted, info = load_fitted(args.checkpoint)
    cfg = fitted.config
    model, variables = fitted.model, fitted.variables
    if args.method is None:
        args.method = "exact" if fitted.stats is not None else "uva"
    classes = None
    if args.classes is not None:
        classes = sorted(set(args.classes))
        bad = [c for c in classes if not 0 <= c < cfg.num_classes]
        if bad:
            raise CLIError(f"--classes {bad} outside the model's {cfg.num_classes} classes.")
    # Embeddings are needed for the before/after effect in the audit record in every case.
    emb = load_embeddings(args, info)
    rows_forget = None
    if args.examples is not None:
        rows_forget = _forget_rows(emb, _parse_ids(args.examples))
        forget_y = np.unique(emb.y_train[rows_forget])
    eval_classes = classes if classes is not None else forget_y.tolist()
    effect = accuracy_effect(model, jnp.asarray(emb.x_test), emb.y_test, eval_classes)
    start = time.perf_counter()
    n = args.n
    new_stats = None  # masking changes the codes, so label statistics no longer apply
    method = get_method(args.method)
    request = "classes" if classes is not None else "examples"
    if request not in method.requests:
        able = [m.name for m in METHODS.values() if request in m.requests]
        raise CLIError(f"--method {method.name} {method.summary}: it cannot forget {request}; "
                       f"use one of {', '.join(able)}.")  # fmt: skip
    if method.exact:
        new_vars, record, new_stats = _exact_unlearn(fitted, info, emb, classes, rows_forget,
                                                     effect)  # fmt: skip
    else:
        data = _forget_data(fitted, emb, classes, rows_forget)
        if n is None and classes is not None:
            n = _swept_n(args, method, info, emb, classes,
                         lambda grid, x, y: sweep(method, model, variables, data, x, y, grid,
                                                  clip=True))  # fmt: skip
        elif n is None:  # examples: no class split to sweep against
            if method.size.counts is None:
                raise CLIError(f"--method {method.name} on --examples needs --n "
                               f"({method.size.description}).")  # fmt: skip
            n = len(rows_forget)
        new_vars, record = unlearn(method, model, variables, data, n, eval_fn=effect)
    secs = time.perf_counter() - start
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.checkpoint)
    if out != pathlib.Path(args.checkpoint):
        if (out / "model").exists():
            raise CLIError(f"--out {out} already holds a checkpoint; choose a new folder.")
    usage = fitted.usage if new_stats is None else _usage_of(new_stats, cfg)
    new = FittedDKVB(
        model, new_vars, usage, audit=(*fitted.audit, record), provenance=fitted.provenance,
        stats=new_stats,
    )  # fmt: skip
    resume_folders = earlier_state(out)["folders"]
    step = save_fitted(
        out, new, encoder=info.get("encoder"), run_info=info, purge_earlier=args.purge_earlier
    )
    purged_folders = [str(out / f) for f in resume_folders] if args.purge_earlier else []
    held, held_text = _retention(pathlib.Path(args.checkpoint), out, step, purged_folders,
                                 usage_recounted=new_stats is not None)  # fmt: skip
    rec = json.loads(record.to_json())
    eff = rec.get("effect") or {}
    before, after = eff.get("before", {}), eff.get("after", {})
    payload = {"checkpoint": str(out), "step": step, "method": args.method, "n": n,
               "seconds": secs, "audit": rec, **held}  # fmt: skip
    text = _table(
        [["before", _pct(before.get("forget_accuracy")), _pct(before.get("retain_accuracy"))],
         ["after", _pct(after.get("forget_accuracy")), _pct(after.get("retain_accuracy"))]],
        ["model", "forget-test acc (%)", "retain-test acc (%)"],
    ) + (f"\n{args.method} (N={n}) in {secs:.2f} s; saved step {step} of {out} with its audit "
         f"record\n{_certificate_line(record)}\n{held_text}")  # fmt: skip
    _emit(args, payload, text)
    return 0


def _forget_data(fitted, emb, classes, rows_forget):
    """The request as the registered methods take it: the histogram, and the forget rows."""
    import numpy as np

    from dkvb_jax.unlearning import ForgetData

    if classes is not None:  # a class's rows in a fixed shuffled order: UvE uses the first N_e
        mask = np.isin(emb.y_train, classes)
        order = np.random.default_rng(0).permutation(int(mask.sum()))
        return ForgetData(classes=tuple(classes), usage=fitted.usage,
                          forget_x=emb.x_train[mask][order])  # fmt: skip
    return ForgetData(forget_x=emb.x_train[rows_forget], example_ids=rows_forget)


def _swept_n(args, method, info: dict, emb, classes, sweep) -> int:
    """The smallest N of the fit's own grid that forgets the classes, on a bounded subset.

    The sweep runs on at most ``sweep_max_examples`` forget and as many other training rows
    (the fit's experiment config), so its cost does not grow with the training set.
    """
    from dkvb_jax.experiment import ExperimentConfig
    from dkvb_jax.experiment.class_unlearning import sweep_subset

    exp = ExperimentConfig.from_dict(info["experiment"]) if "experiment" in info else None
    exp = exp or ExperimentConfig()
    grid = list(exp.grid(method.name))
    x, y = sweep_subset(emb.x_train, emb.y_train, classes, exp.sweep_max_examples, exp.seed)
    if not args.json:
        print(f"sweeping {method.label} {method.size.name} over {grid} on {len(y):,} training "
              "rows ...", file=sys.stderr, flush=True)  # fmt: skip
    result = sweep(grid, x, y)
    return result.smallest_n or max(result.ns)


def _certificate_line(record) -> str:
    """One line saying whether the request is certified exact, and why (or why not)."""
    cert = record.certificate or {}
    if cert.get("certified"):
        return f"certified exact: {cert['reason'].removeprefix('certified exact: ')}"
    return f"NOT certified: {cert.get('reason', 'no certificate was recorded')}"


def _retention(
    source: pathlib.Path,
    out: pathlib.Path,
    step: int,
    purged_folders: list[str],
    usage_recounted: bool = False,
) -> tuple[dict, str]:
    """What on disk still holds the forgotten data after saving `step` of `out`, and what a
    purge deleted: the JSON fields and the lines `dkvb unlearn` prints."""
    from dkvb_jax import checkpoints
    from dkvb_jax.experiment.fitting import USAGE_FILE, earlier_state

    state = earlier_state(out)
    purged = list(checkpoints.read_meta(out / "model", step)[1].get("purged_steps", []))
    steps = state["model_steps"]
    folders = [str(out / name) for name in state["folders"]]
    payload = {
        "purged_steps": purged,
        "purged_folders": purged_folders,
        "still_holding": {
            "model_steps": state["model_steps"],
            "folders": folders,
            # --out leaves the source folder as it was: every step of it predates the forgetting.
            "source_checkpoint": None if out == source else str(source),
            # An exact removal recounts the histogram from the statistics without the rows.
            "usage": None if usage_recounted else str(out / USAGE_FILE),
        },
    }
    lines = []
    if purged or purged_folders:
        what = [f"{_steps(purged)} of {out / 'model'}"] if purged else []
        lines.append(f"purged {', '.join(what + purged_folders)}")
    held = [f"{_steps(steps)} of {out / 'model'}"] if steps else []
    held += folders
    if held:
        lines.append(
            f"{', '.join(held)} still hold the forgotten data; unlearn with --purge-earlier to "
            "delete them"
        )
    if out != source:
        lines.append(
            f"the --checkpoint folder {source} is unchanged and still holds the forgotten data; "
            "delete it once the new folder is checked"
        )
    if not held and out == source:
        lines.append(f"no earlier step or resume state of {out} holds the forgotten data")
    if not usage_recounted:
        lines.append(
            f"{out / USAGE_FILE} still counts the forgotten training examples (UvA reads it)"
        )
    return payload, "\n".join(lines)


def _steps(steps: list[int]) -> str:
    return f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}"


def _exact_unlearn(fitted, info, emb, classes, rows_forget, effect):
    """Exact unlearning: closed-form values from label counts minus the forgotten examples.

    A model fitted with closed-form values carries its statistics: they are subtracted from,
    with no data pass. Otherwise closed-form values are first fitted on the training rows (the
    saved model's values are replaced by them).
    """
    import numpy as np

    from dkvb_jax import exact
    from dkvb_jax.provenance import Certificate, shown
    from dkvb_jax.unlearning.audit import make_record

    model, variables = fitted.model, fitted.variables
    if fitted.config.decoder != "vote":
        raise CLIError("--method exact needs a model with the vote decoder.")
    if fitted.stats is not None:
        base, stats = variables, fitted.stats
        estimator = exact.EstimatorConfig(**info["fit_settings"]["value_config"])
    else:
        estimator = exact.EstimatorConfig()
        ids = np.arange(emb.x_train.shape[0], dtype=np.int32)
        # The certificate comes from what the checkpoint recorded at fit time, never a flag.
        base, stats = exact.fit_exact(
            model, variables, emb.x_train, emb.y_train, ids, provenance=fitted.provenance
        )
    if classes is not None:
        new_vars, new_stats, rec = exact.forget_classes(base, stats, classes, estimator=estimator)
    else:
        counted = np.isin(rows_forget, np.asarray(stats.ids))
        if not counted.all():
            raise CLIError(
                f"--examples {shown(rows_forget[~counted])} are not counted in the model's "
                "values: they are rows of the held-out split that fitted its preprocessing and "
                "keys, or were forgotten already. Held-out rows can only be forgotten by "
                "refitting the model without them."
            )
        new_vars, new_stats, rec = exact.remove_examples(
            base, stats, rows_forget.astype(np.int32), estimator=estimator
        )
    record = make_record(
        method=rec.method, params=rec.params, before=variables, after=new_vars,
        certificate=Certificate.from_dict(rec.certificate),
        forgotten_classes=rec.forgotten_classes,
        forgotten_examples=rec.forgotten_examples,
        effect={"before": effect(variables), "after": effect(new_vars)},
    )  # fmt: skip
    return new_vars, record, new_stats


def _usage_of(stats, cfg):
    """The per-class histogram of the rows the statistics still count (none forgotten)."""
    import jax.numpy as jnp

    from dkvb_jax.training import usage_from_codes

    return usage_from_codes(stats.codes, stats.codes >= 0, cfg.num_keys,
                            jnp.asarray(stats.labels), cfg.num_classes)  # fmt: skip


def cmd_evaluate(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from dkvb_jax.evaluation import membership_inference
    from dkvb_jax.experiment import load_fitted

    fitted, info = load_fitted(args.checkpoint, step=args.step)
    emb = load_embeddings(args, info)
    if emb.x_train.shape[1] != fitted.config.embed_dim:
        raise CLIError(
            f"the embeddings have dimension {emb.x_train.shape[1]} but the checkpoint's model "
            f"reads {fitted.config.embed_dim}: they come from another encoder."
        )
    acc = _accuracies(fitted, emb)
    forgotten = sorted({c for r in fitted.audit for c in (_field(r, "forgotten_classes") or [])})
    payload = {"checkpoint": str(args.checkpoint), "audit_records": len(fitted.audit),
               "forgotten_classes": forgotten, **acc}  # fmt: skip
    lines = [_table([[_pct(acc["train_acc"]), _pct(acc["test_acc"]), len(fitted.audit),
                      ",".join(map(str, forgotten)) or "-"]],
                    ["train acc (%)", "test acc (%)", "unlearning calls", "forgotten classes"])]  # fmt: skip
    if forgotten:
        f_tr, f_te = np.isin(emb.y_train, forgotten), np.isin(emb.y_test, forgotten)
        pred = np.asarray(fitted.model.apply(fitted.variables, jnp.asarray(emb.x_test)).argmax(-1))
        ok = pred == emb.y_test
        payload["forget_test_acc"] = float(ok[f_te].mean())
        payload["retain_test_acc"] = float(ok[~f_te].mean())
        if not args.no_mia:
            mia = membership_inference(
                fitted.model.apply, fitted.variables, jnp.asarray(emb.x_train[f_tr]),
                jnp.asarray(emb.y_train[f_tr]), jnp.asarray(emb.x_test[f_te]),
                jnp.asarray(emb.y_test[f_te]),
            )  # fmt: skip
            payload["mia"] = mia.to_dict()
        lines.append(_table([[_pct(payload["retain_test_acc"]), _pct(payload["forget_test_acc"]),
                              _pct(payload.get("mia", {}).get("accuracy"))]],
                            ["retain-test acc (%)", "forget-test acc (%)", "MIA (%)"]))  # fmt: skip
    names = list(info.get("class_names") or emb.class_names)
    lines.append(_table(
        [[c, names[c] if c < len(names) else "", _pct(a)] for c, a in acc["per_class_test_acc"].items()],
        ["class", "name", "test acc (%)"]))  # fmt: skip
    _emit(args, payload, "\n\n".join(lines))
    return 0


def _field(record, name):
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def _run_compare(args, cfg, out: pathlib.Path) -> int:
    from dkvb_jax.experiment import run_class_unlearning, save_plots

    emb = load_embeddings(args)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = run_class_unlearning(
        (emb.x_train, emb.y_train), (emb.x_test, emb.y_test), cfg,
        key_data=_key_data(args, emb), checkpoint_dir=out / "checkpoint",
        cache_dir=out / "rows", encoder=emb.source.get("encoder"),
        dataset=_train_namespace(emb), key_rows=_key_rows(args),
        meta={"source": emb.source, "machine": _machine(),
              "command": " ".join(["dkvb", *sys.argv[1:]])},
        progress=not args.no_progress,
    )  # fmt: skip
    secs = time.perf_counter() - start
    paths = result.save(out)
    paths.update(save_plots(result, out, class_names=emb.class_names or None))
    names = emb.class_names
    fc = ", ".join(f"{c} ({names[c]})" if c < len(names) else str(c) for c in result.forget_classes)
    payload = {"out": str(out), "seconds": secs, "files": paths, **result.to_dict()}
    text = (
        f"forget class: {fc};  N_a = {result.n_a}, N_e = {result.n_e}\n\n"
        + result.table.to_markdown()
        + f"\n\nwrote {', '.join(sorted(pathlib.Path(p).name for p in paths.values()))} to {out} "
        f"({secs:.0f} s)"
    )
    _emit(args, payload, text)
    return 0


def cmd_compare(args) -> int:
    apply_config_defaults(args)
    return _run_compare(args, experiment_config(args), pathlib.Path(args.out))


# The demo's model: 2,000 training images are ~200 per class. 128 codebooks x 256 keys gives
# about 8 training images per key on average, so most values are trained, while each class still
# owns ~25 keys per codebook for UvA to mask; 10 key epochs and 30 value epochs take seconds
# because value training runs on codes computed once. 1024-key codebooks would leave most pairs
# with no training example on this sample.
# The shipped sample has 2,000 training rows: LDA needs a larger held-out share of so few rows,
# and the 1,400 counted rows fill 128 keys per codebook better than 256.
DEMO = dict(num_codebooks=128, num_keys=128, key_dim=14, key_epochs=10, holdout_fraction=0.3,
            baselines=("finetune",), dkvb_finetune=False, n_a_grid=(1, 2, 4, 8, 16, 32, 64, 128),
            n_e_grid=(1, 2, 5, 10, 20, 50, 100, 200))  # fmt: skip


def cmd_demo(args) -> int:
    args.dataset = args.dataset or "cifar10_sample"
    args.encoder = args.encoder or "mobilenet_v1"
    args.embeddings = None
    args.key_dataset = None
    return _run_compare(args, experiment_config(args, base=DEMO), pathlib.Path(args.out))


# ----------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help="embedding cache (default: $DKVB_CACHE_DIR or ~/.cache/dkvb_jax)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _data(p: argparse.ArgumentParser, embeddings: bool = True) -> None:
    p.add_argument("--encoder", default=None,
                   help="registered encoder, e.g. mobilenet_v1 (default), cifar_resnet20")  # fmt: skip
    p.add_argument("--dataset", default=None,
                   help=f"dataset: {', '.join(DATASETS)} (default cifar10_sample)")  # fmt: skip
    p.add_argument(
        "--data-dir", default=None, help="where the dataset lives (folder, zip, tfds dir)"
    )
    if embeddings:
        p.add_argument("--embeddings", default=None,
                       help="NPZ with x_train, y_train, x_test, y_test instead of encoder+dataset")  # fmt: skip


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=None,
        metavar="FIELD=VALUE",
        help="set any experiment-config field, after --config and the other flags; "
        "VALUE is JSON when it parses, else a string (e.g. --set value_epochs=6 "
        "n_a_grid=[8,16,32] preprocess=lda)",
    )


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=None, help="experiment config JSON (see experiments/configs)"
    )
    p.add_argument("--codebooks", type=int, default=None, help="codebooks C (default 128)")
    p.add_argument("--keys", type=int, default=None, help="keys per codebook K (default 512)")
    p.add_argument("--key-dim", type=int, default=None, help="key dimension (default 14)")
    p.add_argument("--recipe", choices=RECIPE_CHOICES, default=None,
                   help="training recipe: certified (LDA and keys on a held-out 20%% of the "
                   "training rows, values from label counts of the rest; every removal certified "
                   "exact), lda_adam (LDA and keys on every row, Adam-trained values) or paper "
                   "(standardised inputs, SGD); default (the same as certified) unless a "
                   "--config file names one")  # fmt: skip
    p.add_argument("--preprocess", choices=KINDS,
                   default=None,
                   help="input map folded into the projection (default: the recipe's)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=None, help="keys retrieved per codebook (1)")
    p.add_argument("--key-epochs", type=int, default=None, help="EMA k-means epochs (10)")
    p.add_argument(
        "--value-epochs",
        type=int,
        default=None,
        help="value-training epochs (5; trained values only)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="value learning rate (0.5; trained values only)"
    )
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (0)")
    p.add_argument("--key-dataset", default=None,
                   help="fit keys on this dataset's train split, unlabelled (e.g. cifar100)")  # fmt: skip
    p.add_argument("--key-data-dir", default=None, help="data dir of --key-dataset")
    _overrides(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dkvb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dkvb_jax {__version__}",
        help="print the version of dkvb_jax and exit",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="command",
        required=True,
        help="one of these; dkvb COMMAND --help for its options",
    )

    p = sub.add_parser("embed", help="encode a dataset into the embedding cache")
    _data(p, embeddings=False)
    p.add_argument(
        "--splits",
        nargs="+",
        default=["train", "test"],
        choices=["train", "test"],
        help="splits to encode (default: train test)",
    )
    p.add_argument("--rebuild", action="store_true", help="encode again even if cached")
    _common(p)
    p.set_defaults(fn=cmd_embed)

    p = sub.add_parser("fit", help="fit keys (unlabelled) and values; save a checkpoint")
    _data(p)
    _model(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (resumes if present)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the model (default: 1 + the largest label, which the training labels "
        "must then cover without gaps)",
    )
    _common(p)
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("unlearn", help="forget classes or examples; save a new checkpoint")
    _data(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder written by 'dkvb fit'")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="class ids to forget")
    p.add_argument("--examples", default=None, help="training example ids: 1,2,3 or @file")
    p.add_argument("--method", default=None, choices=tuple(METHODS),
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
                   + " (default: exact for models with closed-form values, else uva)")  # fmt: skip
    p.add_argument("--n", type=int, default=None,
                   help="N_a or N_e; default: the smallest N giving forget train accuracy 0")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="new checkpoint folder (default: a new step of --checkpoint)")  # fmt: skip
    p.add_argument(
        "--purge-earlier",
        action="store_true",
        help="after saving, delete the earlier steps of the folder and the fit's keys/ and "
        "values/ (they still hold the forgotten data); recorded in the new step",
    )
    _common(p)
    p.set_defaults(fn=cmd_unlearn)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and MIA of a checkpoint")
    _data(p)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder written by 'dkvb fit' or 'dkvb unlearn'",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--no-mia", action="store_true", help="skip the membership-inference attack")
    _common(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("compare", help="the paper's class-unlearning experiment, end to end")
    _data(p)
    _model(p)
    p.add_argument("--forget-classes", type=int, nargs="+", default=None,
                   help="classes to forget (default: the best-learned class)")  # fmt: skip
    p.add_argument("--baselines", nargs="*", default=None,
                   help="from retrain finetune neggrad+ scrub (default: all)")  # fmt: skip
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="DKVB methods from uva uve exact (default: all three)",
    )
    p.add_argument("--head-epochs", type=int, default=None, help="linear head / retrain epochs")
    p.add_argument("--baseline-max-epochs", type=int, default=None, help="baseline epoch cap")
    p.add_argument("--no-mia", action="store_true", help="skip the membership-inference attack")
    p.add_argument("--out", required=True, help="output folder (table, plots, checkpoint)")
    _common(p)
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("demo", help="fit, forget the best-learned class, compare (offline)")
    p.add_argument("--encoder", default=None, help="encoder (default mobilenet_v1, shipped)")
    p.add_argument("--dataset", default=None, help="dataset (default cifar10_sample, shipped)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the dataset lives (not needed for the shipped cifar10_sample)",
    )
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--out", default="dkvb_demo", help="output folder (default ./dkvb_demo)")
    _overrides(p)
    _common(p)
    p.set_defaults(fn=cmd_demo)
    return parser


def _raised_by_library(e: BaseException) -> bool:
    """True when a ``raise`` statement of dkvb_jax itself raised `e` (not numpy, jax, ...)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    if not os.path.realpath(filename).startswith(_PACKAGE_DIR + os.sep):
        return False
    # An int("x") or a failed unpacking in dkvb_jax code also ends there: only a raise counts.
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def is_input_error(e: BaseException) -> bool:
    """Whether the command line reports `e` as bad input (exit 2) rather than a bug (exit 1).

    Bad input: :class:`~dkvb_jax.errors.InputError` (CLIError included), CheckpointError,
    missing or unreadable files (OSError), training that diverged (FloatingPointError), and a
    ValueError or TypeError that the library raises itself, its convention for bad arguments.
    A TypeError, KeyError, IndexError, ... from inside numpy, jax or a broken code path is a bug.
    """
    from dkvb_jax.checkpoints import CheckpointError

    if isinstance(e, InputError | CheckpointError | OSError | FloatingPointError):
        return True
    return isinstance(e, ValueError | TypeError) and _raised_by_library(e)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dkvb`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_progress:
        os.environ["TQDM_DISABLE"] = "1"
    # orbax logs read-only-manager notices through absl on every restore; they are not news.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print(
            f"dkvb {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr
        )
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if is_input_error(e):
            print(f"dkvb {args.command}: error: {msg}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(
            f"dkvb {args.command}: internal error ({type(e).__name__}: {msg[:300]}); please "
            "report it. Rerun with --debug for the traceback.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
