"""Evaluation throughput of data-parallel DKVB over 1, 2, 4, 8 forced CPU devices.

Each device count runs in its own subprocess, because the number of CPU devices
(``jax_num_cpu_devices``) must be set before JAX starts. A subprocess builds a synthetic DKVB
model, evaluates a fixed set of embeddings with :func:`dkvb_jax.training.evaluate` over a
``data`` mesh, and reports examples per second (median of ``--repeats`` timed runs after a
compiling warm-up). It also checks that the accuracy equals the one-device accuracy.

HONEST NOTE: forced CPU devices are not extra hardware. They are XLA host devices that all share
the same physical cores (2 on the machine this was written on), so this benchmark measures the
overhead of partitioning and collectives, not a speed-up; expect flat or falling throughput.
Run it on a multi-GPU host or a TPU slice (``--platform gpu|tpu``, device counts up to the
devices present) to measure real scaling.

    python experiments/benchmarks/scaling.py --json /tmp/scaling.json
    python experiments/benchmarks/scaling.py --devices 1 2 --examples 2048 --codebooks 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

NOTE = (
    "Forced CPU devices share the same physical cores ({cores} here): numbers show partitioning "
    "overhead, not hardware scaling."
)
# The settings each device-count worker is started with (the rest are the parent's own).
WORKER_FLAGS = (
    "examples",
    "batch_size",
    "codebooks",
    "keys",
    "key_dim",
    "embed_dim",
    "repeats",
    "platform",
)


def worker(args: argparse.Namespace) -> dict:
    """Runs inside a subprocess with JAX configured for `args.devices` devices."""
    import jax

    if args.platform == "cpu":
        jax.config.update("jax_num_cpu_devices", args.devices)
    import numpy as np

    from dkvb_jax import parallel, training
    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.model import DKVB

    config = DKVBConfig(
        embed_dim=args.embed_dim,
        num_classes=10,
        num_codebooks=args.codebooks,
        num_keys=args.keys,
        key_dim=args.key_dim,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, args.embed_dim)).astype(np.float32)
    y = rng.integers(0, 10, args.examples).astype(np.int32)
    model = DKVB(config)
    variables = model.init(jax.random.key(0), x[:2])
    values = jax.random.normal(jax.random.key(1), variables["params"]["values"].shape)
    variables = {**variables, "params": {**variables["params"], "values": values}}
    mesh = parallel.data_mesh(args.devices)
    variables = parallel.place_variables(variables, mesh)

    def run():
        result = training.evaluate(model, variables, x, y, mesh=mesh, batch_size=args.batch_size)
        result.logits.block_until_ready()
        return result

    first = run()  # compiles
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {
        "devices": args.devices,
        "platform": jax.devices()[0].platform,
        "examples": args.examples,
        "seconds_median": median,
        "examples_per_second": args.examples / median,
        "accuracy": first.accuracy,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts")
    p.add_argument("--examples", type=int, default=4096, help="embeddings evaluated per run")
    p.add_argument("--batch-size", type=int, default=256, help="rows per device per step")
    p.add_argument("--codebooks", type=int, default=128)
    p.add_argument("--keys", type=int, default=1024)
    p.add_argument("--key-dim", type=int, default=8)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per device count")
    p.add_argument("--platform", default="cpu", help="cpu (forced devices), gpu or tpu")
    p.add_argument("--json", type=str, default=None, help="write the results here")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_count", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    from _common import forwarded_flags

    args = parse_args(argv)
    if args._worker:
        args.devices = args._count
        print(json.dumps(worker(args)))
        return
    rows = []
    for count in args.devices:
        env = {**os.environ, "JAX_PLATFORMS": args.platform}
        cmd = [sys.executable, __file__, "--_worker", "--_count", str(count)]
        cmd += forwarded_flags(args, WORKER_FLAGS)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"device count {count} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {count} device(s): {rows[-1]['examples_per_second']:.0f} examples/s", flush=True)
    base = rows[0]["examples_per_second"]
    for row in rows:
        row["relative_to_first"] = row["examples_per_second"] / base
    accuracies = {round(r["accuracy"], 12) for r in rows}
    note = NOTE.format(cores=os.cpu_count()) if args.platform == "cpu" else ""

    from tabulate import tabulate

    print(
        tabulate(
            [
                [
                    r["devices"],
                    f"{r['examples_per_second']:.0f}",
                    f"{r['relative_to_first']:.2f}x",
                    f"{r['seconds_median'] * 1e3:.1f}",
                    f"{r['accuracy']:.4f}",
                ]
                for r in rows
            ],
            headers=["devices", "examples/s", "vs first", "ms / run", "accuracy"],
        )
    )
    print(f"accuracy identical across device counts: {len(accuracies) == 1}")
    if note:
        print("NOTE:", note)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "json"}
        with open(args.json, "w") as f:
            json.dump(
                {
                    "settings": settings,
                    "results": rows,
                    "accuracy_identical": len(accuracies) == 1,
                    "note": note,
                    "cpu_count": os.cpu_count(),
                },
                f,
                indent=2,
            )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
