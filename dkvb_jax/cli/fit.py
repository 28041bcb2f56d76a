"""dkvb embed, fit and evaluate."""

from __future__ import annotations

import time

from dkvb_jax.cli.common import CLIError, emit, format_table, percent, record_field
from dkvb_jax.cli.config import apply_config_defaults, experiment_config
from dkvb_jax.cli.embeddings import (
    Embeddings,
    check_names,
    embedding_cache_dir,
    key_data_of,
    key_rows_of,
    load_embeddings,
    train_namespace,
)


def cmd_embed(args) -> int:
    from dkvb_jax.embedding import embed_dataset

    encoder = args.encoder or "mobilenet_v1"
    dataset = args.dataset or "cifar10_sample"
    check_names(encoder, dataset)
    out, rows = {}, []
    for split in args.splits:
        start = time.perf_counter()
        c = embed_dataset(
            encoder,
            dataset,
            split,
            data_dir=args.data_dir,
            cache_dir=embedding_cache_dir(args),
            rebuild=args.rebuild,
            progress=not args.no_progress,
        )
        secs = time.perf_counter() - start
        out[split] = {
            "examples": int(c.embeddings.shape[0]),
            "dim": int(c.embeddings.shape[1]),
            "from_cache": c.from_cache,
            "seconds": secs,
            "path": str(c.path),
        }
        rows.append(
            [
                split,
                c.embeddings.shape[0],
                c.embeddings.shape[1],
                "cache" if c.from_cache else f"encoded ({c.embeddings.shape[0] / secs:.1f} img/s)",
                f"{secs:.1f}",
                str(c.path),
            ]
        )
    emit(
        args,
        {"encoder": encoder, "dataset": dataset, "splits": out},
        format_table(rows, ["split", "examples", "dim", "source", "seconds", "cache entry"]),
    )
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
    key_data = key_data_of(args, emb)
    start = time.perf_counter()
    fitted = fit_from_config(
        cfg,
        emb.x_train,
        emb.y_train,
        num_classes=num_classes,
        dataset=train_namespace(emb),
        key_data=key_data,
        key_rows=key_rows_of(args),
        checkpoint_dir=args.checkpoint,
        encoder=emb.source.get("encoder"),
        run_info=info,
        progress=not args.no_progress,
    ).fitted
    secs = time.perf_counter() - start
    acc = _accuracies(fitted, emb)
    payload = {
        "checkpoint": str(args.checkpoint),
        "config": model_cfg.to_dict(),
        "seconds": secs,
        **{k: acc[k] for k in ("train_acc", "test_acc")},
        "per_class_test_acc": acc["per_class_test_acc"],
    }
    text = (
        format_table(
            [
                [
                    model_cfg.num_codebooks,
                    model_cfg.num_keys,
                    model_cfg.key_dim,
                    percent(acc["train_acc"]),
                    percent(acc["test_acc"]),
                    f"{secs:.1f}",
                ]
            ],
            ["codebooks", "keys", "key dim", "train acc (%)", "test acc (%)", "seconds"],
        )
        + f"\ncheckpoint: {args.checkpoint}"
    )
    if fitted.history is None:
        text += " (already fitted with these settings: restored, not refitted)"
    payload["restored"] = fitted.history is None
    emit(args, payload, text)
    return 0


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
    forgotten = sorted(
        {c for r in fitted.audit for c in (record_field(r, "forgotten_classes") or [])}
    )
    payload = {
        "checkpoint": str(args.checkpoint),
        "audit_records": len(fitted.audit),
        "forgotten_classes": forgotten,
        **acc,
    }
    lines = [
        format_table(
            [
                [
                    percent(acc["train_acc"]),
                    percent(acc["test_acc"]),
                    len(fitted.audit),
                    ",".join(map(str, forgotten)) or "-",
                ]
            ],
            ["train acc (%)", "test acc (%)", "unlearning calls", "forgotten classes"],
        )
    ]
    if forgotten:
        f_tr, f_te = np.isin(emb.y_train, forgotten), np.isin(emb.y_test, forgotten)
        pred = np.asarray(fitted.model.apply(fitted.variables, jnp.asarray(emb.x_test)).argmax(-1))
        ok = pred == emb.y_test
        payload["forget_test_acc"] = float(ok[f_te].mean())
        payload["retain_test_acc"] = float(ok[~f_te].mean())
        if not args.no_mia:
            mia = membership_inference(
                fitted.model.apply,
                fitted.variables,
                jnp.asarray(emb.x_train[f_tr]),
                jnp.asarray(emb.y_train[f_tr]),
                jnp.asarray(emb.x_test[f_te]),
                jnp.asarray(emb.y_test[f_te]),
            )
            payload["mia"] = mia.to_dict()
        lines.append(
            format_table(
                [
                    [
                        percent(payload["retain_test_acc"]),
                        percent(payload["forget_test_acc"]),
                        percent(payload.get("mia", {}).get("accuracy")),
                    ]
                ],
                ["retain-test acc (%)", "forget-test acc (%)", "MIA (%)"],
            )
        )
    names = list(info.get("class_names") or emb.class_names)
    lines.append(
        format_table(
            [
                [c, names[c] if c < len(names) else "", percent(a)]
                for c, a in acc["per_class_test_acc"].items()
            ],
            ["class", "name", "test acc (%)"],
        )
    )
    emit(args, payload, "\n\n".join(lines))
    return 0
