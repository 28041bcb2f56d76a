"""Class unlearning over every class and several seeds: mean and spread of every method.

For each seed a DKVB model and a linear head are fitted once; then each class in turn is the
forget class, and the comparison of :func:`dkvb_jax.experiment.run_class_unlearning` is run
(DKVB UvA / UvE with their sweeps, the baselines on the head, fine-tuning the DKVB values). The
UvA sweep over every class is one ``vmap`` over the classes per N
(:func:`dkvb_jax.unlearning.every_class_metrics`), so the sweep figure covers all classes at the
cost of a single evaluation pass each.

Writes into ``--out``: ``summary.md/.csv/.json`` (mean and std over classes x seeds per method:
retain/forget test accuracy, their change vs the original model, MIA, wall s, GFLOPs, cost
ratio to DKVB-UvA), ``runs.json`` (every single run), ``sweep_uva_all_classes.png`` and
``accuracy_vs_cost.png``.

    python experiments/class_unlearning.py --config experiments/configs/cifar10_resnet20.json \
        --seeds 0 1 2 --out outputs/cifar10_resnet20_all_classes
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tabulate import tabulate
from tqdm.auto import tqdm

from dkvb_jax import cli
from dkvb_jax.evaluation import ResultRow, ResultsTable
from dkvb_jax.experiment import (
    fit_head,
    plot_accuracy_vs_cost,
    plot_mean_sweep,
    run_class_unlearning,
)
from dkvb_jax.experiment.recipe import fit_from_config
from dkvb_jax.unlearning import every_class_metrics

METRICS = ("retain_test_acc", "forget_test_acc", "mia", "wall_s", "gflops", "cost_vs_dkvb")


def every_class_sweep(fitted, x, y, ns) -> tuple[np.ndarray, np.ndarray]:
    """Forget / retain accuracy `[classes, len(ns)]` of UvA for every class (vmap) and N."""
    f, r = zip(
        *(every_class_metrics(fitted.model, fitted.variables, fitted.usage, n, x, y) for n in ns),
        strict=True,
    )
    return np.stack(f, 1), np.stack(r, 1)


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and std per method over runs (each run: records of one ResultsTable)."""
    by_method: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        base = {r["method"]: r for r in run["summary"]}
        for rec in run["summary"]:
            m = by_method.setdefault(rec["method"], {})
            for k in METRICS:
                if rec.get(k) is not None:
                    m.setdefault(k, []).append(rec[k])
            own = (
                "original"
                if rec["method"].startswith("DKVB") or rec["method"] == "original"
                else "original (linear head)"
            )
            if own in base:
                for k in ("retain_test_acc", "forget_test_acc"):
                    if rec.get(k) is not None and base[own].get(k) is not None:
                        m.setdefault(f"delta_{k}", []).append(rec[k] - base[own][k])
    out = []
    for method, vals in by_method.items():
        row = {"method": method, "runs": max(len(v) for v in vals.values()) if vals else 0}
        for k, v in vals.items():
            row[f"{k}_mean"] = float(np.mean(v))
            row[f"{k}_std"] = float(np.std(v))
        out.append(row)
    return out


def to_markdown(summary: list[dict]) -> str:
    def pm(row, key, scale=100.0, fmt=".2f"):
        if f"{key}_mean" not in row:
            return "-"
        return f"{scale * row[key + '_mean']:{fmt}} ± {scale * row[key + '_std']:{fmt}}"

    body = [
        [r["method"], r["runs"], pm(r, "retain_test_acc"), pm(r, "delta_retain_test_acc"),
         pm(r, "forget_test_acc"), pm(r, "mia"), pm(r, "wall_s", 1, ".3g"),
         pm(r, "gflops", 1, ".3g"), pm(r, "cost_vs_dkvb", 1, ".3g")]
        for r in summary
    ]  # fmt: skip
    headers = ["method", "runs", "retain-test acc (%)", "Δ retain vs original (pts)",
               "forget-test acc (%)", "MIA (%)", "wall s", "GFLOPs", "cost vs DKVB-UvA (x)"]  # fmt: skip
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_data_args(p)
    cli.add_model_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--classes", type=int, nargs="+", default=None, help="default: every class")
    p.add_argument("--baselines", nargs="*", default=None)
    p.add_argument("--out", required=True)
    cli.add_common_args(p)
    args = p.parse_args(argv)
    args.methods = args.forget_classes = args.head_epochs = args.baseline_max_epochs = None
    args.no_mia = False
    cli.apply_config_defaults(args)
    base_cfg = cli.experiment_config(args)
    emb = cli.load_embeddings(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = int(max(emb.y_train.max(), emb.y_test.max())) + 1
    classes = args.classes if args.classes is not None else list(range(num_classes))
    key_data = cli.key_data_of(args, emb)
    runs, sweeps_f, sweeps_r = [], [], []
    start = time.perf_counter()
    for seed in args.seeds:
        cfg = base_cfg.replace(seed=seed)
        k_fit, k_head, *_ = jax.random.split(jax.random.key(seed), 4)
        fit = fit_from_config(
            cfg, emb.x_train, emb.y_train, num_classes=num_classes, key=k_fit,
            key_data=key_data, checkpoint_dir=out / f"seed{seed}" / "checkpoint",
            progress=not args.no_progress,
        )  # fmt: skip
        fitted = fit.fitted
        # The values' training rows: without a held-out split, every training row.
        x_tr, y_tr = emb.x_train[fit.rows], emb.y_train[fit.rows]
        ns = [n for n in cfg.n_a_grid if n <= cfg.num_keys]
        f, r = every_class_sweep(fitted, jnp.asarray(emb.x_test), jnp.asarray(emb.y_test), ns)
        sweeps_f.append(f[classes])
        sweeps_r.append(r[classes])
        head = fit_head(x_tr, y_tr, num_classes, epochs=cfg.head_epochs, key=k_head)
        for c in tqdm(classes, desc=f"seed {seed}: classes", disable=args.no_progress):
            res = run_class_unlearning(
                (x_tr, y_tr), (emb.x_test, emb.y_test),
                cfg.replace(forget_classes=(c,)), fitted=fitted, head=head,
                cache_dir=out / f"seed{seed}" / f"class{c}", progress=False,
            )  # fmt: skip
            runs.append({"seed": seed, "class": c, "n_a": res.n_a, "n_e": res.n_e,
                         "summary": res.table.records()})  # fmt: skip
    summary = summarise(runs)
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    meta = {"source": emb.source, "seeds": args.seeds, "classes": classes,
            "experiment": base_cfg.to_dict(), "seconds": time.perf_counter() - start,
            "machine": cli.machine_info(), "command": " ".join(sys.argv)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))
    keys = sorted({k for r in summary for k in r}, key=lambda k: (k != "method", k))
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(summary)
    md = to_markdown(summary)
    n_a = [r["n_a"] for r in runs]
    md += f"\n\nN_a chosen per run: median {int(np.median(n_a))}, range {min(n_a)}-{max(n_a)}"
    (out / "summary.md").write_text(md + "\n")
    plot_mean_sweep(ns, np.concatenate(sweeps_f), np.concatenate(sweeps_r),
                    out / "sweep_uva_all_classes.png", method="uva",
                    title="UvA, every class x seed (test split)")  # fmt: skip
    mean_rows = [
        ResultRow(r["method"], flops=1e9 * r["gflops_mean"], wall_s=r.get("wall_s_mean"),
                  retain_test_acc=r.get("retain_test_acc_mean"),
                  forget_test_acc=r.get("forget_test_acc_mean"))
        for r in summary if "gflops_mean" in r
    ]  # fmt: skip
    if mean_rows:
        plot_accuracy_vs_cost(ResultsTable.from_rows(mean_rows), out / "accuracy_vs_cost.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
