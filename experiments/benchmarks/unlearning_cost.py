"""Cost of forgetting a class: DKVB masking vs fine-tuning a linear head, in the same run.

On synthetic class-clustered embeddings (one forget class with `--forget` examples), it measures

* ``dkvb-histogram``: `forget_classes` from the stored per-class usage histogram (no data pass);
* ``dkvb-data-pass``: `unlearn_via_activations` over the forget embeddings (one lookup pass);
* ``dkvb-every-class``: every class forgotten on its own and evaluated on `--eval` held-out
  embeddings in one vmapped call (`every_class_metrics`; its lookup pass included);
* ``finetune``: the fine-tune baseline (retain-set SGD on a linear head trained on all the data,
  `dkvb_jax.baselines.finetune`) run until its forget accuracy is as low as DKVB's (or
  `--ft-max-epochs`), so the two are compared at equal forget accuracy,

with wall seconds (compilation excluded: the DKVB calls are timed on a second call) and
XLA-counted FLOPs (`dkvb_jax.evaluation.cost`), and the ratio of fine-tuning to each DKVB row.

    python experiments/benchmarks/unlearning_cost.py
    python experiments/benchmarks/unlearning_cost.py --codebooks 64 --keys 1024 --per-class 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--codebooks", type=int, default=256)
    parser.add_argument("--keys", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--forget", type=int, default=5000, help="forget-class embeddings")
    parser.add_argument("--per-class", type=int, default=500, help="embeddings of other classes")
    parser.add_argument("--n-a", type=int, default=10, help="keys masked per codebook")
    parser.add_argument("--eval", type=int, default=1000, help="held-out embeddings per class")
    parser.add_argument("--ft-max-epochs", type=int, default=50, help="fine-tune epoch cap")
    parser.add_argument("--out", default=None, help="JSON (default results/unlearning_cost.json)")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from _common import print_table, write_json

    from dkvb_jax import baselines
    from dkvb_jax.baselines.heads import LinearHead
    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.evaluation import cost as cost_lib
    from dkvb_jax.evaluation.splits import UnlearningData
    from dkvb_jax.model import DKVB
    from dkvb_jax.training.usage import key_usage
    from dkvb_jax.training.values import ValueTrainConfig, train_values
    from dkvb_jax.unlearning import every_class_metrics, forget_classes, unlearn_via_activations

    rng = np.random.default_rng(0)
    means = rng.normal(size=(args.classes, args.embed)).astype(np.float32) * 2
    counts = [args.forget] + [args.per_class] * (args.classes - 1)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int32)
    x = (means[y] + rng.normal(size=(len(y), args.embed))).astype(np.float32)
    forget = y == 0
    y_ev = np.repeat(np.arange(args.classes), args.eval).astype(np.int32)
    x_ev = (means[y_ev] + rng.normal(size=(len(y_ev), args.embed))).astype(np.float32)

    cfg = DKVBConfig(
        embed_dim=args.embed,
        num_classes=args.classes,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
    )
    model = DKVB(cfg)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:2]))
    variables, _ = train_values(
        model, variables, x, y, key=jax.random.key(1), config=ValueTrainConfig(epochs=1),
        progress=False,
    )  # fmt: skip
    usage = key_usage(model, variables, x, labels=y)
    fx = jnp.asarray(x[forget])

    def timed(fn):
        jax.block_until_ready(fn())  # compile + warm
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        return out, time.perf_counter() - t

    def accuracy(v, xs, ys):
        return float(jnp.mean(model.apply(v, jnp.asarray(xs)).argmax(-1) == ys))

    hist_vars, hist_s = timed(lambda: forget_classes(model, variables, 0, args.n_a, usage=usage)[0])
    pass_vars, pass_s = timed(
        lambda: unlearn_via_activations(model, variables, args.n_a, forget_x=fx)[0]
    )
    # FLOPs of the data pass: the lookup of every forget embedding (the masking itself is a
    # top-n over a [codebooks, keys] histogram, counted by the histogram row).
    codes_fn = jax.jit(lambda v, x: model.apply(v, x, method=DKVB.codes))
    pass_flops = cost_lib.flops_of(codes_fn.lower(variables, fx).compile())
    from dkvb_jax.unlearning import mask_top_n_per_class

    sel_fn = jax.jit(lambda u: mask_top_n_per_class(u, jnp.arange(args.classes) == 0, args.n_a))
    hist_flops = cost_lib.flops_of(sel_fn.lower(usage).compile())

    (ev_forget, ev_retain), every_s = timed(
        lambda: every_class_metrics(model, variables, usage, args.n_a, x_ev, y_ev)
    )
    every_flops = cost_lib.flops_of(codes_fn.lower(variables, jnp.asarray(x_ev)).compile())
    dkvb_forget = accuracy(hist_vars, x[forget], y[forget])

    head = LinearHead(args.classes)
    head_vars = {"params": baselines.heads.params_initializer(head, args.embed)(jax.random.key(2))}
    retain = ~forget
    data = UnlearningData(
        retain_x=jnp.asarray(x[retain]), retain_y=jnp.asarray(y[retain]),
        forget_x=fx, forget_y=jnp.asarray(y[forget]),
    )  # fmt: skip
    # The original head: trained on everything (retain + forget) before unlearning.
    full = UnlearningData(
        retain_x=jnp.asarray(x), retain_y=jnp.asarray(y), forget_x=fx, forget_y=data.forget_y
    )
    head_vars, _, _ = baselines.finetune(
        head.apply, head_vars, full, baselines.FineTuneConfig(progress=False), key=jax.random.key(3)
    )
    # Equal forget accuracy: fine-tune until it forgets as well as DKVB did (or the cap).
    stop = baselines.StoppingConfig(
        max_epochs=args.ft_max_epochs, forget_target=dkvb_forget, patience=None
    )
    ft_vars, ft_cost, ft_traj = baselines.finetune(
        head.apply, head_vars, data, baselines.FineTuneConfig(stopping=stop, progress=False),
        key=jax.random.key(4),
    )  # fmt: skip

    def head_acc(v, xs, ys):
        return float(jnp.mean(head.apply(v, jnp.asarray(xs)).argmax(-1) == ys))

    rows = [
        {
            "method": "dkvb-histogram",
            "wall s": hist_s,
            "FLOPs": hist_flops,
            "forget acc": accuracy(hist_vars, x[forget], y[forget]),
            "retain acc": accuracy(hist_vars, x[retain], y[retain]),
        },
        {
            "method": "dkvb-data-pass",
            "wall s": pass_s,
            "FLOPs": pass_flops,
            "forget acc": accuracy(pass_vars, x[forget], y[forget]),
            "retain acc": accuracy(pass_vars, x[retain], y[retain]),
        },
        {
            "method": f"dkvb-every-class ({args.classes} classes, vmap)",
            "wall s": every_s,
            "FLOPs": every_flops,
            "forget acc": float(np.mean(ev_forget)),
            "retain acc": float(np.mean(ev_retain)),
        },
        {
            "method": f"finetune (linear head, {ft_traj.stop_epoch} epochs)",
            "wall s": ft_cost.wall_s,
            "FLOPs": ft_cost.total_flops,
            "forget acc": head_acc(ft_vars, x[forget], y[forget]),
            "retain acc": head_acc(ft_vars, x[retain], y[retain]),
        },
    ]
    ft = rows[-1]
    for r in rows[:-1]:
        r["time ratio (ft / this)"] = ft["wall s"] / max(r["wall s"], 1e-12)
        r["FLOP ratio (ft / this)"] = ft["FLOPs"] / max(r["FLOPs"], 1.0)
    print_table(rows, "Forgetting class 0")
    path = write_json("unlearning_cost", {"args": vars(args), "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
