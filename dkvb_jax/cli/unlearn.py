"""dkvb unlearn: forget classes or examples with a registered method; save a new step."""

from __future__ import annotations

import json
import pathlib
import sys
import time

from dkvb_jax.cli.common import CLIError, emit, format_table, percent
from dkvb_jax.cli.embeddings import Embeddings, load_embeddings
from dkvb_jax.unlearning.registry import METHODS


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
    from dkvb_jax.experiment.fitted import FittedDKVB, earlier_state
    from dkvb_jax.unlearning import accuracy_effect, get_method, unlearn
    from dkvb_jax.unlearning.registry import default_method

    if (args.classes is None) == (args.examples is None):
        raise CLIError("give exactly one of --classes or --examples.")
    fitted, info = load_fitted(args.checkpoint)
    cfg = fitted.config
    model, variables = fitted.model, fitted.variables
    if args.method is None:
        args.method = default_method(label_stats=fitted.stats is not None)
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
    _check_request(method, "classes" if classes is not None else "examples")
    if method.exact:
        new_vars, record, new_stats = _exact_unlearn(
            fitted, info, emb, classes, rows_forget, effect
        )
    else:
        data = _forget_data(fitted, emb, classes, rows_forget)
        if n is None:
            n = _default_n(args, method, info, emb, classes, rows_forget, model, variables, data)
        new_vars, record = unlearn(method, model, variables, data, n, eval_fn=effect)
    secs = time.perf_counter() - start
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.checkpoint)
    if out != pathlib.Path(args.checkpoint):
        if (out / "model").exists():
            raise CLIError(f"--out {out} already holds a checkpoint; choose a new folder.")
    usage = fitted.usage if new_stats is None else _usage_of(new_stats, cfg)
    new = FittedDKVB(
        model,
        new_vars,
        usage,
        audit=(*fitted.audit, record),
        provenance=fitted.provenance,
        stats=new_stats,
    )
    resume_folders = earlier_state(out)["folders"]
    step = save_fitted(
        out, new, encoder=info.get("encoder"), run_info=info, purge_earlier=args.purge_earlier
    )
    purged_folders = [str(out / f) for f in resume_folders] if args.purge_earlier else []
    held, held_text = _retention(
        pathlib.Path(args.checkpoint),
        out,
        step,
        purged_folders,
        usage_recounted=new_stats is not None,
    )
    rec = json.loads(record.to_json())
    payload = {
        "checkpoint": str(out),
        "step": step,
        "method": args.method,
        "n": n,
        "seconds": secs,
        "audit": rec,
        **held,
    }
    text = _effect_table(rec.get("effect") or {}) + (
        f"\n{args.method} (N={n}) in {secs:.2f} s; saved step {step} of {out} with its audit "
        f"record\n{_certificate_line(record)}\n{held_text}"
    )
    emit(args, payload, text)
    return 0


def _check_request(method, request: str) -> None:
    """Refuses a method that cannot forget this kind of request (``classes`` / ``examples``)."""
    if request not in method.requests:
        able = [m.name for m in METHODS.values() if request in m.requests]
        raise CLIError(
            f"--method {method.name} {method.summary}: it cannot forget {request}; "
            f"use one of {', '.join(able)}."
        )


def _default_n(args, method, info, emb, classes, rows_forget, model, variables, data) -> int:
    """The size a masking method runs at without --n: swept for classes, every example else."""
    from dkvb_jax.unlearning import sweep

    if classes is not None:
        return _swept_n(
            args,
            method,
            info,
            emb,
            classes,
            lambda grid, x, y: sweep(method, model, variables, data, x, y, grid, clip=True),
        )
    # examples: no class split to sweep against
    if method.size.counts is None:
        raise CLIError(
            f"--method {method.name} on --examples needs --n ({method.size.description})."
        )
    return len(rows_forget)


def _effect_table(effect: dict) -> str:
    """Forget- and retain-test accuracy before and after, from the audit record's effect."""
    rows = []
    for name in ("before", "after"):
        accs = effect.get(name, {})
        rows.append(
            [name, percent(accs.get("forget_accuracy")), percent(accs.get("retain_accuracy"))]
        )
    return format_table(rows, ["model", "forget-test acc (%)", "retain-test acc (%)"])


def _forget_data(fitted, emb, classes, rows_forget):
    """The request as the registered methods take it: the histogram, and the forget rows."""
    import numpy as np

    from dkvb_jax.unlearning import ForgetData

    if classes is not None:  # a class's rows in a fixed shuffled order: UvE uses the first N_e
        mask = np.isin(emb.y_train, classes)
        order = np.random.default_rng(0).permutation(int(mask.sum()))
        return ForgetData(
            classes=tuple(classes), usage=fitted.usage, forget_x=emb.x_train[mask][order]
        )
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
        print(
            f"sweeping {method.label} {method.size.name} over {grid} on {len(y):,} training "
            "rows ...",
            file=sys.stderr,
            flush=True,
        )
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
    from dkvb_jax.experiment.fitted import USAGE_FILE, earlier_state

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
        new_vars, new_stats, rec = exact.remove_classes(base, stats, classes, estimator=estimator)
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
        method=rec.method,
        params=rec.params,
        before=variables,
        after=new_vars,
        certificate=Certificate.from_dict(rec.certificate),
        forgotten_classes=rec.forgotten_classes,
        forgotten_examples=rec.forgotten_examples,
        effect={"before": effect(variables), "after": effect(new_vars)},
    )
    return new_vars, record, new_stats


def _usage_of(stats, cfg):
    """The per-class histogram of the rows the statistics still count (none forgotten)."""
    import jax.numpy as jnp

    from dkvb_jax.training import usage_from_codes

    return usage_from_codes(
        stats.codes, stats.codes >= 0, cfg.num_keys, jnp.asarray(stats.labels), cfg.num_classes
    )
