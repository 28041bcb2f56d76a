"""How separable the synthetic ImageNet is: the numbers its calibration is stated in.

For one :class:`~dkvb_jax.data.synthetic_imagenet.SyntheticImageNetConfig` (the defaults, or the
flags' overrides), prints on the validation split:

- the nearest-true-class-mean classifier's accuracy, its superclass accuracy, and the share of
  its errors that stay inside the true superclass;
- the benchmark's linear probe after each of ``--epochs`` epochs: the very functions
  ``imagenet_scale.py`` trains and scores it with (``_imagenet._probe_init``, ``_probe_chunk``,
  ``_probe_correct``: Adam 1e-3, batch 512, wd 1e-4, streamed over the train chunks in order,
  standardised by the first chunk's mean and std), and the share of its errors inside the true
  superclass;

and the CPU-seconds of generation, probe and in all.

    python experiments/benchmarks/synthetic_probe.py                    # full size, 1 epoch
    python experiments/benchmarks/synthetic_probe.py --epochs 2
    python experiments/benchmarks/synthetic_probe.py --rows-per-class 100 --epochs 10
    python experiments/benchmarks/synthetic_probe.py --noise-scale 4.5 --json /tmp/probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_OVERRIDES = ("noise_scale", "class_scale", "superclass_scale", "subspace_scale")


def _config(args):
    from dkvb_jax.data import synthetic_imagenet as si

    over = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    return si.SyntheticImageNetConfig(rows_per_class=args.rows_per_class, seed=args.seed, **over)


def _super_share(pred, y, per_super):
    """Share of the errors whose predicted class lies in the true superclass."""
    wrong = pred != y
    return float((pred[wrong] // per_super == y[wrong] // per_super).mean()) if wrong.any() else 1.0


def measure(cfg, epochs: int, log=print) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _imagenet import _probe_chunk, _probe_correct, _probe_init, _probe_predict

    from dkvb_jax.data import synthetic_imagenet as si

    cpu0, per_super = time.process_time(), cfg.num_classes // cfg.num_superclasses
    val = list(si.iter_chunks(cfg, "validation"))
    xv, yv = np.concatenate([x for x, _ in val]), np.concatenate([y for _, y in val])
    means, _ = si._structure(cfg)
    pred = (xv @ means.T - 0.5 * (means**2).sum(1)).argmax(1)
    out = dict(
        config=dataclasses.asdict(cfg),
        train_rows=si.num_rows(cfg, "train"),
        nearest_mean=float(np.mean(pred == yv)),
        nearest_mean_superclass=float(np.mean(pred // per_super == yv // per_super)),
        nearest_mean_errors_in_superclass=_super_share(pred, yv, per_super),
        probe=[],
    )
    log(
        f"{out['train_rows']:,} train rows | nearest true class mean: {out['nearest_mean']:.4f} "
        f"(superclass {out['nearest_mean_superclass']:.4f}, errors in superclass "
        f"{out['nearest_mean_errors_in_superclass']:.3f})"
    )
    n_chunks, gen_cpu, probe_cpu = si.num_chunks(cfg, "train"), 0.0, 0.0
    # Chunks are regenerated every epoch (as the benchmark does) unless they fit in 512 MiB.
    cache = {} if out["train_rows"] * cfg.dim * 4 <= 2**29 else None
    x0, _ = si.chunk(cfg, "train", 0)
    mu, sd = jnp.asarray(x0.mean(0)), jnp.asarray(x0.std(0) + 1e-6)
    params, opt = _probe_init(cfg.dim, cfg.num_classes)
    for epoch in range(1, epochs + 1):
        for i in range(n_chunks):
            c = time.process_time()
            x, y = cache[i] if cache is not None and i in cache else si.chunk(cfg, "train", i)
            if cache is not None:
                cache[i] = (x, y)
            gen_cpu += time.process_time() - c
            c = time.process_time()
            params, opt = jax.block_until_ready(_probe_chunk(params, opt, x, y, mu, sd))
            probe_cpu += time.process_time() - c
        acc = sum(int(_probe_correct(params, x, y, mu, sd)) for x, y in val) / len(yv)
        share = _super_share(np.asarray(_probe_predict(params, xv, mu, sd)), yv, per_super)
        out["probe"].append(dict(epoch=epoch, val_accuracy=acc, errors_in_superclass=share))
        log(
            f"probe epoch {epoch}: val {acc:.4f} (errors in superclass {share:.3f}) | "
            f"cpu so far: generation {gen_cpu:.1f} s, probe {probe_cpu:.1f} s"
        )
    out.update(generation_cpu_s=gen_cpu, probe_cpu_s=probe_cpu)
    out["cpu_s"] = time.process_time() - cpu0
    log(f"cpu in all: {out['cpu_s']:.1f} s")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows-per-class", type=int, default=None, help="balanced (default: full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1, help="probe epochs (full benchmark: 1)")
    for name in _OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out = measure(_config(args), args.epochs)
    out["command"] = " ".join(sys.argv)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
