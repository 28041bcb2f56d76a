"""Cost of forgetting a class: DKVB unlearning vs fine-tuning at equal forget accuracy, one run.

Data: cached embeddings of an encoder (``--encoder``; CIFAR-10 train/test from the embedding
cache, e.g. ``DKVB_CACHE_DIR``), or synthetic class clusters (``--synthetic``, no data needed).
The DKVB model is the paper's size by default (256 codebooks x 4096 keys, key dim 14, top-1):
keys by EMA k-means on ``--key-rows`` unlabelled training rows, values by the paper's SGD, and
the per-class usage histogram stored at training time. N_a is the smallest value of a doubling
grid that drives the forget class's training accuracy to ``--target`` (the sweep is model
selection, outside the costs). Rows, each with wall seconds (compilation excluded: warm calls are
timed, the median of 21 / 5 / 3 for the three single-class rows) and XLA-counted FLOPs:

* ``dkvb-histogram (core)``: the UvA selection from the histogram (jitted) and the masking, as a
  JAX pipeline composing the pure functions pays it;
* ``dkvb-histogram (library call)``: ``forget_classes``, including its checks and audit record
  (the record's sha256 fingerprint of the model dominates at the paper's size);
* ``dkvb-usage-collection``: the one-time cost of the histogram the two rows above read: one
  lookup of every training row and a per-class count, as ``fit_dkvb`` runs it (50,000 rows on
  CIFAR-10);
* ``dkvb-data-pass``: ``unlearn_via_activations`` over the class's training embeddings (one
  lookup of each: 5,000 on CIFAR-10);
* ``dkvb-every-class``: every class forgotten on its own and evaluated on the test set in one
  vmapped call (``every_class_metrics``, its lookup pass included);
* ``finetune``: the fine-tune baseline on a linear head trained on the same embeddings, run until
  its forget-train accuracy is at most DKVB's plus the results tables' tolerance (1 point) or
  ``--ft-max-epochs``, never stopping on a plateau (the row says which);
* ``retrain``, ``neggrad+``, ``scrub``: the other baselines on the same head, with the same
  stopping rule (retrain: ``--head-epochs`` from scratch on the retain rows).

Each baseline epoch is one jitted ``lax.scan`` over its minibatches (``baselines/trainer.py``), so
its cost is the method's, not Python dispatch. A baseline row that reached DKVB's forget accuracy
says how many times DKVB's core it costs (alone, and with the one-time collection added) and its
retain-test accuracy against DKVB's at that equal forget accuracy; one that did not gets no
ratio.

    python experiments/benchmarks/unlearning_cost.py --encoder mobilenet_v1   # needs the cache
    python experiments/benchmarks/unlearning_cost.py --synthetic --codebooks 64 --keys 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _data(args):
    """(x_train, y_train, x_test, y_test) as float32 / int32 arrays."""
    import numpy as np

    if args.synthetic:
        rng = np.random.default_rng(0)
        means = rng.normal(size=(10, args.embed)).astype(np.float32)

        def draw(n):
            y = np.repeat(np.arange(10), n).astype(np.int32)
            return (means[y] + 2.0 * rng.normal(size=(len(y), args.embed))).astype(np.float32), y

        return (*draw(5000), *draw(1000))
    from dkvb_jax.embedding import DEFAULT_CACHE_DIR, embed_dataset

    out = []
    for split in ("train", "test"):
        cached = embed_dataset(
            args.encoder,
            "cifar10",
            split,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir or DEFAULT_CACHE_DIR,
            progress=False,
        )
        out += [cached.embeddings.astype(np.float32), np.asarray(cached.labels, np.int32)]
    return tuple(out)


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="mobilenet_v1", help="cached encoder")
    parser.add_argument("--data-dir", default="../shared/data/cifar10", help="CIFAR-10 images")
    parser.add_argument(
        "--cache-dir", default=None, help="embedding cache (default: DKVB_CACHE_DIR)"
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic clusters instead")
    parser.add_argument("--embed", type=int, default=512, help="synthetic embedding dim")
    parser.add_argument("--codebooks", type=int, default=256, help="DKVB codebooks")
    parser.add_argument("--keys", type=int, default=4096, help="keys per codebook")
    parser.add_argument("--key-rows", type=int, default=10000, help="rows for the k-means keys")
    parser.add_argument("--key-epochs", type=int, default=3, help="k-means epochs")
    parser.add_argument("--value-epochs", type=int, default=10, help="value-training epochs")
    parser.add_argument("--forget-class", type=int, default=0, help="the class to forget")
    parser.add_argument("--target", type=float, default=0.0, help="forget accuracy to reach")
    parser.add_argument("--ft-max-epochs", type=int, default=50, help="baselines' epoch cap")
    parser.add_argument("--head-epochs", type=int, default=30, help="head / retrain epochs")
    parser.add_argument("--out", default=None, help="JSON (default results/unlearning_cost.json)")
    return parser.parse_args(argv)


def _timed(fn, repeats=1):
    """Output and median wall seconds of warm calls (the first call compiles and warms)."""
    import jax
    import numpy as np

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def _dkvb_rows(args, fitted, n_a, x_tr, y_tr, x_te, y_te):
    """The DKVB rows: forgetting from the stored histogram (core, library call), collecting that
    histogram once (a data pass over every training row), UvA from a data pass over the class,
    and every class in one vmapped call."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dkvb_jax import evaluation
    from dkvb_jax.evaluation import cost as cost_lib
    from dkvb_jax.model import DKVB
    from dkvb_jax.training.codes import compute_codes
    from dkvb_jax.training.usage import key_usage, usage_from_codes
    from dkvb_jax.unlearning import (
        apply_selection,
        every_class_metrics,
        forget_classes,
        mask_top_n,
        unlearn_via_activations,
    )

    model, variables, usage = fitted.model, fitted.variables, fitted.usage
    c, forget, retain_te = args.forget_class, y_tr == args.forget_class, y_te != args.forget_class

    def accs(v):
        return {
            "forget-train acc": evaluation.accuracy(model.apply, v, x_tr[forget], y_tr[forget]),
            "retain-test acc": evaluation.accuracy(
                model.apply, v, x_te[retain_te], y_te[retain_te]
            ),
        }

    select = jax.jit(lambda u: mask_top_n(u[c : c + 1], n_a).any(axis=0))
    core_vars, core_s = _timed(lambda: apply_selection(variables, select(usage), "search"), 21)
    # Counted on the loop-free top-k selection (the same keys): XLA counts a loop body once.
    select_flat = jax.jit(lambda u: mask_top_n(u[c : c + 1], n_a, loop_free=True).any(axis=0))
    core_flops = cost_lib.flops_of(select_flat.lower(usage).compile())
    lib_vars, lib_s = _timed(lambda: forget_classes(model, variables, c, n_a, usage=usage)[0], 5)

    # FLOPs of lookups on the loop-free twin: XLA counts a loop body once (evaluation/cost.py).
    dense = cost_lib.dense_lookup_model(model)
    codes_fn = jax.jit(lambda v, x: dense.apply(v, x, method=DKVB.codes))

    def pass_flops(x):
        return cost_lib.flops_of(codes_fn.lower(variables, jnp.asarray(x)).compile())

    # The histogram forgetting reads is collected once, when the model is fitted: one lookup of
    # every training row and a per-class count (what fit_dkvb runs).
    _, collect_s = _timed(lambda: key_usage(model, variables, x_tr, y_tr))
    idx, valid = compute_codes(model, variables, x_tr)
    count = jax.jit(usage_from_codes, static_argnums=(2, 4))
    count_flops = cost_lib.flops_of(
        count.lower(idx, valid, model.config.num_keys, jnp.asarray(y_tr), 10).compile()
    )
    collect_flops = pass_flops(x_tr) + count_flops

    fx = jnp.asarray(x_tr[forget])
    pass_vars, pass_s = _timed(
        lambda: unlearn_via_activations(model, variables, n_a, forget_x=fx)[0], 3
    )
    (ev_forget, ev_retain), every_s = _timed(
        lambda: every_class_metrics(model, variables, usage, n_a, x_te, y_te)
    )
    # At this N each class's masked model is searched directly: one full pass per class.
    every_flops = 10 * cost_lib.flops_of(
        jax.jit(dense.apply).lower(variables, jnp.asarray(x_te)).compile()
    )
    rows = [
        {
            "method": "dkvb-histogram (core)",
            "wall s": core_s,
            "FLOPs": core_flops,
            **accs(core_vars),
        },
        {
            "method": "dkvb-histogram (library call)",
            "wall s": lib_s,
            "FLOPs": core_flops,
            **accs(lib_vars),
        },
        {
            "method": f"dkvb-usage-collection (one-time, at fit: {len(y_tr)} training rows)",
            "wall s": collect_s,
            "FLOPs": collect_flops,
        },
        {
            "method": f"dkvb-data-pass ({int(forget.sum())} embeddings)",
            "wall s": pass_s,
            "FLOPs": pass_flops(fx),
            **accs(pass_vars),
        },
        {
            "method": "dkvb-every-class (10 classes, vmap, test set)",
            "wall s": every_s,
            "FLOPs": every_flops,
            "retain-test acc": float(np.mean(ev_retain)),
            "forget-test acc (mean)": float(np.mean(ev_forget)),
        },
    ]
    return rows


def _baseline_rows(args, head, x_tr, y_tr, x_te, y_te, target):
    """Fine-tune, retrain, NegGrad+ and SCRUB on the linear head; the three unlearning baselines
    run until their forget-train accuracy is at most `target` or to ``--ft-max-epochs`` (no
    plateau stop). Returns (rows, fine-tune trajectory)."""
    import jax

    from dkvb_jax import baselines, evaluation

    c = args.forget_class
    forget, retain_te = y_tr == c, y_te != c
    data = baselines.class_unlearning_data(
        head.inputs(x_tr), y_tr, (c,), val_x=head.inputs(x_te), val_y=y_te
    )
    stop = baselines.StoppingConfig(
        max_epochs=args.ft_max_epochs, forget_target=min(target, 1.0), patience=None
    )
    configs = {
        "finetune": baselines.FineTuneConfig(stopping=stop, progress=False),
        "retrain": baselines.RetrainConfig(
            init_fn=baselines.params_initializer(head.head, x_tr.shape[1]),
            epochs=args.head_epochs,
            progress=False,
        ),
        "neggrad+": baselines.NegGradConfig(stopping=stop, progress=False),
        "scrub": baselines.SCRUBConfig(stopping=stop, progress=False),
    }

    def head_acc(v, xs, ys):
        return evaluation.accuracy(head.head.apply, v, head.inputs(xs), ys)

    rows, trajectories = [], {}
    for i, (name, cfg) in enumerate(configs.items()):
        v, cost, traj = baselines.BASELINES[name](
            head.head.apply, head.variables, data, cfg, key=jax.random.key(4 + i)
        )
        trajectories[name] = traj
        forget_acc = head_acc(v, x_tr[forget], y_tr[forget])
        rows.append(
            {
                "method": f"{name} (linear head, {traj.stop_epoch} epochs, {traj.stop_reason})",
                "wall s": cost.wall_s,
                "FLOPs": cost.total_flops,
                "GFLOP/s": cost.total_flops / 1e9 / max(cost.wall_s, 1e-12),
                "forget-train acc": forget_acc,
                "retain-test acc": head_acc(v, x_te[retain_te], y_te[retain_te]),
                "reached DKVB forget acc": bool(forget_acc <= target),
            }
        )
    return rows, trajectories["finetune"]


def main(argv=None) -> None:
    args = _args(argv)

    import jax
    import numpy as np
    from _common import print_table, write_json

    from dkvb_jax import evaluation
    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.evaluation.table import FORGET_TOLERANCE, forget_target
    from dkvb_jax.experiment.class_unlearning import fit_head
    from dkvb_jax.experiment.fitting import fit_dkvb
    from dkvb_jax.experiment.recipe import key_data_rows
    from dkvb_jax.training import KeyInitConfig, ValueTrainConfig
    from dkvb_jax.unlearning import sweep_uva

    x_tr, y_tr, x_te, y_te = _data(args)
    c = args.forget_class
    forget, retain_te = y_tr == c, y_te != c
    cfg = DKVBConfig(
        embed_dim=x_tr.shape[1],
        num_classes=10,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
        key_dim=14,
    )
    t0 = time.perf_counter()
    fitted = fit_dkvb(
        cfg,
        x_tr,
        y_tr,
        key=jax.random.key(0),
        key_data=x_tr[key_data_rows(len(x_tr), args.key_rows, 0)],
        key_config=KeyInitConfig(epochs=args.key_epochs),
        value_config=ValueTrainConfig(epochs=args.value_epochs),
        progress=False,
    )
    fit_s = time.perf_counter() - t0
    model, variables, usage = fitted.model, fitted.variables, fitted.usage

    # N_a: the smallest doubling-grid value that reaches the target on the forget-train rows.
    grid = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= args.keys]
    pick = np.random.default_rng(0).permutation(len(y_tr))[:2000]
    sweep = sweep_uva(model, variables, usage, c, x_tr[pick], y_tr[pick], grid, target=args.target)
    n_a = sweep.smallest_n or max(grid)

    rows = _dkvb_rows(args, fitted, n_a, x_tr, y_tr, x_te, y_te)
    core, collection = rows[0], rows[2]
    # The baselines must forget as much as DKVB (the results tables' tolerance, 1 point).
    target = forget_target(core["forget-train acc"])
    head = fit_head(x_tr, y_tr, 10, epochs=args.head_epochs, key=jax.random.key(2))
    baseline_rows, ft_traj = _baseline_rows(args, head, x_tr, y_tr, x_te, y_te, target)
    ft = baseline_rows[0]
    for r in rows:
        r["time ratio (ft / this)"] = ft["wall s"] / max(r["wall s"], 1e-12)
        r["FLOP ratio (ft / this)"] = ft["FLOPs"] / max(r["FLOPs"], 1.0)
    for r in baseline_rows:
        # A cost ratio means something only at equal forgetting; retain accuracy is compared
        # there too.
        if not r["reached DKVB forget acc"]:
            continue
        r["time vs DKVB core"] = r["wall s"] / max(core["wall s"], 1e-12)
        r["FLOPs vs DKVB core"] = r["FLOPs"] / max(core["FLOPs"], 1.0)
        r["FLOPs vs DKVB core + collection"] = r["FLOPs"] / (core["FLOPs"] + collection["FLOPs"])
        r["retain-test vs DKVB (pts)"] = 100 * (r["retain-test acc"] - core["retain-test acc"])
    rows += baseline_rows
    accuracy = evaluation.accuracy
    title = (
        f"Forgetting class {c} ({'synthetic' if args.synthetic else args.encoder}, "
        f"C={args.codebooks} K={args.keys}, N_a={n_a}; original retain-test acc "
        f"{accuracy(model.apply, variables, x_te[retain_te], y_te[retain_te]):.4f}, forget-train "
        f"acc {accuracy(model.apply, variables, x_tr[forget], y_tr[forget]):.4f}; baselines run "
        f"to forget-train acc <= {target:.4f} (DKVB's + {FORGET_TOLERANCE:g}) or "
        f"{args.ft_max_epochs} epochs)"
    )
    print_table(rows, title)
    payload = {
        "args": vars(args),
        "n_a": n_a,
        "sweep": {"ns": sweep.ns, "forget": sweep.forget_accuracy, "retain": sweep.retain_accuracy},
        "fit_seconds": fit_s,
        "baseline_forget_target": target,
        "finetune_trajectory": ft_traj.to_dict(),
        "rows": rows,
    }
    path = write_json("unlearning_cost", payload, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
