"""Shared helpers of the benchmark scripts: timing, machine description, JSON output.

The benchmark machines are small and shared, so every timing records the load average, the
best of several repeats, and the process CPU time next to the wall time (CPU time is far less
sensitive to other processes than wall time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Timing:
    """Timing of a jitted call: compile apart from run, best of `repeats` runs."""

    compile_s: float
    best_wall_s: float
    median_wall_s: float
    best_cpu_s: float
    repeats: int
    loadavg: tuple[float, float, float]

    def per_second(self, items: int) -> float:
        return items / self.best_wall_s


def time_call(fn: Callable, *args, repeats: int = 5, min_time_s: float = 0.0) -> Timing:
    """Times `fn(*args)`: the first call (compile + run) apart from the best of `repeats` more.

    Args:
      fn: a jitted function; its outputs are waited for with `jax.block_until_ready`.
      repeats: timed calls after the first.
      min_time_s: keep repeating past `repeats` until this much wall time was spent timing.
    """
    load0 = os.getloadavg()
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < repeats or time.perf_counter() - start < min_time_s:
        c, t = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    load1 = os.getloadavg()
    walls.sort()
    return Timing(
        compile_s=compile_s,
        best_wall_s=walls[0],
        median_wall_s=walls[len(walls) // 2],
        best_cpu_s=min(cpus),
        repeats=len(walls),
        loadavg=tuple(round(max(a, b), 2) for a, b in zip(load0, load1, strict=True)),
    )


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (VmHWM, else ru_maxrss), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forwarded_flags(args, names: tuple[str, ...]) -> list[str]:
    """``["--batch-size", "256", ...]``: the parsed `args` named, as flags for a child process."""
    return [
        part for name in names for part in (f"--{name.replace('_', '-')}", str(getattr(args, name)))
    ]


def run_isolated(script: str | Path, args: list[str], timeout_s: float = 900) -> dict:
    """Runs `python <script> <args>` in a fresh process; parses its last stdout line as JSON.

    Peak memory is only meaningful per process, so each memory measurement runs alone.
    """
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_at_start": os.getloadavg(),
    }


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    """Writes `payload` plus machine info to `out` or `results/<name>.json`; returns the path."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    return path


def print_table(rows: list[dict], title: str | None = None) -> None:
    from tabulate import tabulate

    if title:
        print(f"\n{title}")
    print(tabulate(rows, headers="keys", floatfmt=".4g"))
