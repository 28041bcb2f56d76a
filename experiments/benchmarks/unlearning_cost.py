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
* ``dkvb-data-pass``: ``unlearn_via_activations`` over the class's training embeddings (one
  lookup of each: 5,000 on CIFAR-10);
* ``dkvb-every-class``: every class forgotten on its own and evaluated on the test set in one
  vmapped call (``every_class_metrics``, its lookup pass included);
* ``finetune``: the fine-tune baseline on a linear head trained on the same embeddings, run until
  its forget accuracy is as low as DKVB's or ``--ft-max-epochs`` (the row says which);
* ``retrain``, ``neggrad+``, ``scrub``: the other baselines on the same head, with the same
  stopping rule (retrain: ``--head-epochs`` from scratch on the retain rows); each baseline row
  says how many times DKVB's core it costs.

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
            args.encoder, "cifar10", split, data_dir=args.data_dir,
            cache_dir=args.cache_dir or DEFAULT_CACHE_DIR, progress=False,
        )  # fmt: skip
        out += [cached.embeddings.astype(np.float32), np.asarray(cached.labels, np.int32)]
    return tuple(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="mobilenet_v1", help="cached encoder")
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument(
        "--cache-dir", default=None, help="embedding cache (default: DKVB_CACHE_DIR)"
    )
    parser.add_argument("--synthetic", action="store_true", help="synthetic clusters instead")
    parser.add_argument("--embed", type=int, default=512, help="synthetic embedding dim")
    parser.add_argument("--codebooks", type=int, default=256)
    parser.add_argument("--keys", type=int, default=4096)
    parser.add_argument("--key-rows", type=int, default=10000, help="rows for the k-means keys")
    parser.add_argument("--key-epochs", type=int, default=3)
    parser.add_argument("--value-epochs", type=int, default=10)
    parser.add_argument("--forget-class", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.0, help="forget accuracy to reach")
    parser.add_argument("--ft-max-epochs", type=int, default=50, help="fine-tune epoch cap")
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--out", default=None, help="JSON (default results/unlearning_cost.json)")
    args = parser.parse_args(argv)

    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from _common import print_table, write_json

    from dkvb_jax import baselines, evaluation
    from dkvb_jax.baselines import class_unlearning_data
    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.evaluation import cost as cost_lib
    from dkvb_jax.experiment.class_unlearning import fit_head
    from dkvb_jax.experiment.fitting import fit_dkvb
    from dkvb_jax.experiment.recipe import key_data_rows
    from dkvb_jax.model import DKVB
    from dkvb_jax.training import KeyInitConfig, ValueTrainConfig
    from dkvb_jax.unlearning import (
        apply_selection,
        every_class_metrics,
        forget_classes,
        mask_top_n,
        sweep_uva,
        unlearn_via_activations,
    )

    x_tr, y_tr, x_te, y_te = _data(args)
    c = args.forget_class
    forget = y_tr == c
    cfg = DKVBConfig(
        embed_dim=x_tr.shape[1], num_classes=10, num_codebooks=args.codebooks,
        num_keys=args.keys, key_dim=14,
    )  # fmt: skip
    t0 = time.perf_counter()
    fitted = fit_dkvb(
        cfg, x_tr, y_tr, key=jax.random.key(0),
        key_data=x_tr[key_data_rows(len(x_tr), args.key_rows, 0)],
        key_config=KeyInitConfig(epochs=args.key_epochs),
        value_config=ValueTrainConfig(epochs=args.value_epochs), progress=False,
    )  # fmt: skip
    fit_s = time.perf_counter() - t0
    model, variables, usage = fitted.model, fitted.variables, fitted.usage

    accuracy = functools.partial(evaluation.accuracy, model.apply)

    # N_a: the smallest doubling-grid value that reaches the target on the forget-train rows.
    grid = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= args.keys]
    pick = np.random.default_rng(0).permutation(len(y_tr))[:2000]
    sweep = sweep_uva(model, variables, usage, c, x_tr[pick], y_tr[pick], grid, target=args.target)
    n_a = sweep.smallest_n or max(grid)

    def timed(fn, repeats=1):
        """Output and median wall seconds of warm calls (the first call compiles and warms)."""
        jax.block_until_ready(fn())
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = jax.block_until_ready(fn())
            times.append(time.perf_counter() - t)
        return out, float(np.median(times))

    select = jax.jit(lambda u: mask_top_n(u[c : c + 1], n_a).any(axis=0))
    core_vars, core_s = timed(lambda: apply_selection(variables, select(usage), "search"), 21)
    # Counted on the loop-free top-k selection (the same keys): XLA counts a loop body once.
    select_flat = jax.jit(lambda u: mask_top_n(u[c : c + 1], n_a, loop_free=True).any(axis=0))
    core_flops = cost_lib.flops_of(select_flat.lower(usage).compile())
    lib_vars, lib_s = timed(lambda: forget_classes(model, variables, c, n_a, usage=usage)[0], 5)
    fx = jnp.asarray(x_tr[forget])
    pass_vars, pass_s = timed(
        lambda: unlearn_via_activations(model, variables, n_a, forget_x=fx)[0], 3
    )
    # FLOPs of lookups on the loop-free twin: XLA counts a loop body once (evaluation/cost.py).
    dense = cost_lib.dense_lookup_model(model)
    codes_fn = jax.jit(lambda v, x: dense.apply(v, x, method=DKVB.codes))
    pass_flops = cost_lib.flops_of(codes_fn.lower(variables, fx).compile())
    (ev_forget, ev_retain), every_s = timed(
        lambda: every_class_metrics(model, variables, usage, n_a, x_te, y_te)
    )
    # At this N each class's masked model is searched directly: one full pass per class.
    apply_fn = jax.jit(dense.apply)
    every_flops = 10 * cost_lib.flops_of(apply_fn.lower(variables, jnp.asarray(x_te)).compile())
    dkvb_forget = accuracy(core_vars, x_tr[forget], y_tr[forget])

    # Fine-tuning a linear head trained on the same embeddings, to DKVB's forget accuracy.
    retain_te = y_te != c
    head = fit_head(x_tr, y_tr, 10, epochs=args.head_epochs, key=jax.random.key(2))
    data = class_unlearning_data(head.inputs(x_tr), y_tr, (c,), val_x=head.inputs(x_te), val_y=y_te)
    stop = baselines.StoppingConfig(
        max_epochs=args.ft_max_epochs, forget_target=dkvb_forget, patience=None
    )
    ft_vars, ft_cost, ft_traj = baselines.finetune(
        head.head.apply, head.variables, data,
        baselines.FineTuneConfig(stopping=stop, progress=False), key=jax.random.key(4),
    )  # fmt: skip

    def head_acc(v, xs, ys):
        return evaluation.accuracy(head.head.apply, v, head.inputs(xs), ys)

    # The other baselines on the same head, with the same stopping rule (retrain: its epochs).
    others = {
        "retrain": baselines.RetrainConfig(
            init_fn=baselines.params_initializer(head.head, x_tr.shape[1]),
            epochs=args.head_epochs, progress=False,
        ),
        "neggrad+": baselines.NegGradConfig(stopping=stop, progress=False),
        "scrub": baselines.SCRUBConfig(stopping=stop, progress=False),
    }  # fmt: skip
    baseline_rows = []
    for i, (name, cfg) in enumerate(others.items()):
        v, cost, traj = baselines.BASELINES[name](
            head.head.apply, head.variables, data, cfg, key=jax.random.key(5 + i)
        )
        label = f"{name} (linear head, {traj.stop_epoch} epochs, {traj.stop_reason})"
        baseline_rows.append(
            {"method": label, "wall s": cost.wall_s, "FLOPs": cost.total_flops,
             "forget-train acc": head_acc(v, x_tr[forget], y_tr[forget]),
             "retain-test acc": head_acc(v, x_te[retain_te], y_te[retain_te])}
        )  # fmt: skip

    dkvb_acc = functools.partial(accuracy, x=x_te[retain_te], y=y_te[retain_te])
    rows = [
        {"method": "dkvb-histogram (core)", "wall s": core_s, "FLOPs": core_flops,
         "forget-train acc": dkvb_forget, "retain-test acc": dkvb_acc(core_vars)},
        {"method": "dkvb-histogram (library call)", "wall s": lib_s, "FLOPs": core_flops,
         "forget-train acc": accuracy(lib_vars, x_tr[forget], y_tr[forget]),
         "retain-test acc": dkvb_acc(lib_vars)},
        {"method": f"dkvb-data-pass ({int(forget.sum())} embeddings)", "wall s": pass_s,
         "FLOPs": pass_flops, "forget-train acc": accuracy(pass_vars, x_tr[forget], y_tr[forget]),
         "retain-test acc": dkvb_acc(pass_vars)},
        {"method": "dkvb-every-class (10 classes, vmap, test set)", "wall s": every_s,
         "FLOPs": every_flops, "forget-train acc": None,
         "retain-test acc": float(np.mean(ev_retain)),
         "forget-test acc (mean)": float(np.mean(ev_forget))},
        {"method": f"finetune (linear head, {ft_traj.stop_epoch} epochs, {ft_traj.stop_reason})",
         "wall s": ft_cost.wall_s, "FLOPs": ft_cost.total_flops,
         "forget-train acc": head_acc(ft_vars, x_tr[forget], y_tr[forget]),
         "retain-test acc": head_acc(ft_vars, x_te[retain_te], y_te[retain_te])},
    ]  # fmt: skip
    ft = rows[-1]
    for r in rows[:-1]:
        r["time ratio (ft / this)"] = ft["wall s"] / max(r["wall s"], 1e-12)
        r["FLOP ratio (ft / this)"] = ft["FLOPs"] / max(r["FLOPs"], 1.0)
    core = rows[0]
    for r in [ft, *baseline_rows]:
        r["time vs DKVB core"] = r["wall s"] / max(core["wall s"], 1e-12)
        r["FLOPs vs DKVB core"] = r["FLOPs"] / max(core["FLOPs"], 1.0)
    rows += baseline_rows
    title = (
        f"Forgetting class {c} ({'synthetic' if args.synthetic else args.encoder}, "
        f"C={args.codebooks} K={args.keys}, N_a={n_a}; original retain-test acc "
        f"{dkvb_acc(variables):.4f}, forget-train acc {accuracy(variables, x_tr[forget], y_tr[forget]):.4f})"
    )
    print_table(rows, title)
    payload = {
        "args": vars(args), "n_a": n_a, "sweep": {"ns": sweep.ns, "forget": sweep.forget_accuracy,
                                                  "retain": sweep.retain_accuracy},
        "fit_seconds": fit_s, "finetune_trajectory": ft_traj.to_dict(), "rows": rows,
    }  # fmt: skip
    path = write_json("unlearning_cost", payload, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
