"""The paper's class-unlearning protocol over every class and several seeds, from one command.

For each seed one DKVB model is fitted (:func:`dkvb_jax.experiment.recipe.fit_from_config`, the
config's recipe; the default is ``certified``) and the original model is measured once. Then
every class in turn is the forget class, for each registered masking method the config names
(``methods``; by default UvA and UvE) and the oracle:

- a masking method (``UvA``, ``UvE``, ...): its size swept over the config's grid for it
  (``n_a_grid``, ``n_e_grid``) on the *training* split (at most ``sweep_max_examples`` forget
  and retain rows, :func:`sweep_subset`), a grid value above the keys or the class's rows trying
  all of them; the smallest size whose forget accuracy reaches ``target`` unlearns, UvA from the
  usage histogram stored at fit time, UvE from the forget examples in a seeded random order;
- ``oracle``: the values refitted on the training rows without the class, with the same keys.
  For closed-form values (the certified recipe) that is the exact removal
  (:func:`dkvb_jax.exact.remove_classes`, bit-identical to the refit); for trained values it is
  value training from the initial values on the retained rows.

All classes' unlearned variants are then evaluated together (one vmapped pass per method:
:func:`dkvb_jax.unlearning.variant_outputs`, :func:`~dkvb_jax.unlearning.params_variant_outputs`):
accuracy on the retain / forget rows of the training and test splits, and SCRUB's membership
inference (:func:`dkvb_jax.evaluation.mia_attack` on per-example loss: forget training rows vs
forget-class test rows). The summary gives mean and worst over classes x seeds per method,
named by the method's label.

Writes into ``--out``: ``summary.md/.json/.csv``, ``runs.json`` (every class x seed, with its
sweeps), ``sweep_<method>.png`` (``sweep_uva.png``, ``sweep_uve.png``: mean and range over runs,
training split).

    python experiments/class_unlearning.py --encoder cifar_resnet20 --dataset cifar10 \\
        --data-dir ../shared/data/cifar10 --seeds 0 1 2 --out outputs/every_class
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import pathlib
import sys
import time

import jax
import numpy as np
from tabulate import tabulate
from tqdm.auto import tqdm

from dkvb_jax import cli, exact
from dkvb_jax._malloc import keep_freed_heap
from dkvb_jax.evaluation import mia_attack
from dkvb_jax.experiment import plot_mean_sweep
from dkvb_jax.experiment.class_unlearning import sweep_subset
from dkvb_jax.experiment.fitting import build_model
from dkvb_jax.experiment.recipe import fit_from_config
from dkvb_jax.training import train_values
from dkvb_jax.unlearning import (
    METHODS,
    ForgetData,
    SweepResult,
    UnlearningMethod,
    params_variant_outputs,
    sweep,
    unlearn,
    variant_outputs,
)

ORIGINAL, ORACLE = "original", "oracle"
SPLITS = ("forget_train", "retain_train", "forget_test", "retain_test")


def masking_methods_of(cfg) -> list[UnlearningMethod]:
    """The registered masking methods the config names, in registry order."""
    return [m for m in METHODS.values() if m.name in cfg.methods and m.select is not None]


def class_sweeps(fitted, cfg, c, x, y, key) -> tuple[dict[str, SweepResult], np.ndarray]:
    """Each masking method's sweep for forget class `c` on the training rows `(x, y)`.

    Returns:
      ``{method name: SweepResult}`` and the class's forget rows `[n_c, dim]` in the order a
      method reading examples uses them (UvE's first N_e).
    """
    model, v = fitted.model, fitted.variables
    sx, sy = sweep_subset(x, y, (c,), cfg.sweep_max_examples, cfg.seed)
    forget_x = x[y == c][
        np.asarray(jax.random.permutation(jax.random.fold_in(key, c), (y == c).sum()))
    ]
    data = ForgetData(classes=(c,), usage=fitted.usage, forget_x=forget_x)
    sweeps = {
        m.name: sweep(
            m,
            model,
            v,
            data,
            sx,
            sy,
            cfg.grid(m.name),
            target=cfg.target,
            mode=cfg.mask_mode,
            clip=True,  # a grid value above the keys or the class's rows tries all of them
        )
        for m in masking_methods_of(cfg)
    }
    return sweeps, forget_x


def oracle_params(fit, cfg, classes, x, y, key) -> tuple[dict, list[bool | None]]:
    """The values refitted without each class: params with a leading `[classes]` axis.

    Returns:
      The stacked params and, per class, whether the removal is certified exact (None for
      trained values, which have no certificate).
    """
    fitted = fit.fitted
    if fitted.stats is not None:
        est = cfg.value_config()
        outs = [
            exact.remove_classes(fitted.variables, fitted.stats, c, estimator=est) for c in classes
        ]
        params = [o[0]["params"] for o in outs]
        certified = [bool(o[2].certified) for o in outs]
    else:
        # The same initial values and shuffling key as fit_dkvb, on the retained rows only.
        k_init, _, k_values = jax.random.split(key, 3)
        init = {**fitted.variables, "params": build_model(fitted.config, k_init)[1]["params"]}
        params = [
            train_values(
                fitted.model,
                init,
                x[y != c],
                y[y != c],
                key=k_values,
                config=cfg.value_config(),
                progress=False,
            )[0]["params"]
            for c in classes
        ]
        certified = [None] * len(classes)
    return jax.tree.map(lambda *a: np.stack(a), *params), certified


def measure(pred, loss, train_y, test_y, columns, seed) -> list[dict]:
    """Accuracies and MIA of variant column `i` forgetting class `c`, for each `(i, c)`.

    Args:
      pred, loss: `[n_train + n_test, variants]` outputs on the training then the test rows.
      train_y, test_y: labels of the two splits.
      columns: `(column, forget class)` pairs.
      seed: seed of the attack's subsampling and folds.
    """
    labels = np.concatenate([train_y, test_y])
    is_train = np.arange(labels.size) < train_y.shape[0]
    out = []
    for i, c in columns:
        correct, forget = pred[:, i] == labels, labels == c
        rec = {"class": int(c)}
        for split, rows in (("train", is_train), ("test", ~is_train)):
            rec[f"forget_{split}"] = float(correct[rows & forget].mean())
            rec[f"retain_{split}"] = float(correct[rows & ~forget].mean())
        mia = mia_attack(loss[is_train & forget, i], loss[~is_train & forget, i], seed=seed)
        rec.update(mia=mia.accuracy, mia_std=mia.std, mia_per_side=mia.n_per_side)
        out.append(rec)
    return out


def run_seed(fit, cfg, classes, x, y, test, key, progress) -> list[dict]:
    """Every class of one fitted model: sweeps, unlearning, one evaluation per method.

    Records are named by the method's label (``UvA``, ``UvE``), ``original`` and ``oracle``.
    """
    fitted, mode = fit.fitted, cfg.mask_mode
    model, v = fitted.model, fitted.variables
    xe, ye = np.concatenate([x, test[0]]), np.concatenate([y, test[1]])
    k_perm = jax.random.fold_in(key, 1)
    sweeps, selections = collections.defaultdict(list), collections.defaultdict(list)
    for c in tqdm(classes, desc=f"seed {cfg.seed}: sweeps", disable=not progress):
        sw, forget_x = class_sweeps(fitted, cfg, c, x, y, k_perm)
        data = ForgetData(classes=(c,), usage=fitted.usage, forget_x=forget_x)
        for name, s in sw.items():
            new, _ = unlearn(name, model, v, data, s.smallest_n or max(s.ns), mode=mode)
            sweeps[name].append(s)
            selections[name].append(np.asarray(new["mask"][mode]))
    each = list(enumerate(classes))
    original = jax.tree.map(lambda a: np.asarray(a)[None], v["params"])
    runs = {
        ORIGINAL: measure(
            *params_variant_outputs(model, v, original, xe, ye),
            y,
            test[1],
            [(0, c) for c in classes],
            cfg.seed,
        )
    }
    for name in sweeps:
        sel = np.stack(selections[name])
        depth = int(sel.sum(-1).max()) + model.config.top_k
        recs = measure(
            *variant_outputs(model, v, sel, xe, ye, depth, mode=mode), y, test[1], each, cfg.seed
        )
        for rec, s in zip(recs, sweeps[name], strict=True):
            rec.update(
                n=s.smallest_n or max(s.ns),
                reached=s.smallest_n is not None,
                sweep=s.to_rows(),
                sweep_baseline=list(s.baseline),
            )
        runs[METHODS[name].label] = recs
    params, certified = oracle_params(fit, cfg, classes, x, y, key)
    recs = measure(*params_variant_outputs(model, v, params, xe, ye), y, test[1], each, cfg.seed)
    for rec, cert in zip(recs, certified, strict=True):
        rec["certified_exact"] = cert
    runs[ORACLE] = recs
    return [dict(r, method=m, seed=cfg.seed) for m, recs in runs.items() for r in recs]


# Worst case of each metric over runs: the most forget accuracy, the least retain accuracy, and
# the attack accuracy farthest from chance (0.5).
WORST = {
    "forget_train": max,
    "forget_test": max,
    "retain_train": min,
    "retain_test": min,
    "mia": lambda v: max(v, key=lambda a: abs(a - 0.5)),
}


def summarise(runs: list[dict]) -> list[dict]:
    """Per method: mean, std and worst of every metric over classes x seeds, and N chosen."""
    out = []
    for method in dict.fromkeys(r["method"] for r in runs):  # in the order the runs name them
        recs = [r for r in runs if r["method"] == method]
        row = {"method": method, "runs": len(recs)}
        for k, worst in WORST.items():
            vals = [r[k] for r in recs]
            row.update(
                {
                    f"{k}_mean": float(np.mean(vals)),
                    f"{k}_std": float(np.std(vals)),
                    f"{k}_worst": float(worst(vals)),
                }
            )
        if "n" in recs[0]:
            ns = [r["n"] for r in recs]
            row.update(
                n_median=float(np.median(ns)),
                n_min=min(ns),
                n_max=max(ns),
                reached=sum(r["reached"] for r in recs),
            )
        if recs[0].get("certified_exact") is not None:
            row["certified"] = sum(r["certified_exact"] for r in recs)
        out.append(row)
    return out


def to_markdown(summary: list[dict]) -> str:
    """The summary as a table: mean ± std (worst) per metric, in percent."""

    def cell(row, key):
        m, s, w = (100 * row[f"{key}_{p}"] for p in ("mean", "std", "worst"))
        return f"{m:.2f} ± {s:.2f} ({w:.2f})"

    def n_cell(row):
        if "n_median" not in row:
            return "-"
        return (
            f"{row['n_median']:g} [{row['n_min']}-{row['n_max']}], {row['reached']}/{row['runs']}"
        )

    headers = [
        "method",
        "runs",
        "forget-train acc",
        "forget-test acc",
        "retain-train acc",
        "retain-test acc",
        "MIA",
        "N: median [range], reached target",
    ]
    body = [[r["method"], r["runs"], *(cell(r, k) for k in WORST), n_cell(r)] for r in summary]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def plot_sweeps(runs: list[dict], out: pathlib.Path) -> list[str]:
    """Mean and range of each method's sweep over the runs that share the most common grid."""
    paths = []
    for spec in METHODS.values():
        method = spec.label
        sweeps = [r["sweep"] for r in runs if r["method"] == method and "sweep" in r]
        if not sweeps:
            continue
        grids = collections.Counter(tuple(p["n"] for p in s) for s in sweeps)
        grid = grids.most_common(1)[0][0]
        same = [s for s in sweeps if tuple(p["n"] for p in s) == grid]
        base = np.asarray([r["sweep_baseline"] for r in runs if r["method"] == method])
        paths.append(
            plot_mean_sweep(
                list(grid),
                np.asarray([[p["forget_accuracy"] for p in s] for s in same]),
                np.asarray([[p["retain_accuracy"] for p in s] for s in same]),
                out / f"sweep_{spec.name}.png",
                method=spec.name,
                original=tuple(base.mean(0)),
                split="train",
                title=f"{method} sweep on the training split, {len(same)} runs (class x seed)",
            )
        )
    return paths


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_data_args(p)
    cli.add_model_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (0 1 2)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="default: every class")
    p.add_argument("--out", required=True, help="output folder")
    cli.add_common_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_heap()  # half this run's CPU went to page faults without it (dkvb_jax._malloc)
    wall, cpu = time.perf_counter(), time.process_time()
    cli.apply_config_defaults(args)
    base_cfg = cli.experiment_config(args)
    emb = cli.load_embeddings(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = int(max(emb.y_train.max(), emb.y_test.max())) + 1
    classes = args.classes if args.classes is not None else list(range(num_classes))
    key_data, progress = cli.key_data_of(args, emb), not args.no_progress
    runs = []
    for seed in args.seeds:
        cfg = base_cfg.replace(seed=seed)
        key = jax.random.key(seed)
        fit = fit_from_config(
            cfg,
            emb.x_train,
            emb.y_train,
            num_classes=num_classes,
            key=key,
            dataset=cli.train_namespace(emb),
            key_data=key_data,
            key_rows=cli.key_rows_of(args),
            progress=progress,
        )
        # The values' training rows D: without a held-out split, every training row.
        x, y = emb.x_train[fit.rows], emb.y_train[fit.rows]
        runs += run_seed(fit, cfg, classes, x, y, (emb.x_test, emb.y_test), key, progress)
    summary = summarise(runs)
    seconds = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    meta = {
        "source": emb.source,
        "seeds": args.seeds,
        "classes": classes,
        "experiment": base_cfg.to_dict(),
        **seconds,
        "machine": cli.machine_info(),
        "command": " ".join(["python", "experiments/class_unlearning.py", *sys.argv[1:]]),
    }
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))
    keys = list(dict.fromkeys(k for r in summary for k in r))
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(summary)
    md = to_markdown(summary)
    md += (
        f"\n\nmean ± std (worst) over {len(classes)} classes x {len(args.seeds)} seeds, in %; "
        "MIA's worst is the farthest from 50%. "
        f"{seconds['wall_s']:.0f} s wall, {seconds['cpu_s']:.0f} CPU-s."
    )
    (out / "summary.md").write_text(md + "\n")
    plot_sweeps(runs, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
