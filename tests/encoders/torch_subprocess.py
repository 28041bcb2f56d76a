"""Runs the torch side of the encoder cross-checks (`torch_reference.py`) in a torch venv.

The suite's Python 3.12 has no torch wheel on these machines; a Python 3.11 venv with PyPI's CPU
torch does (`.ci/run` builds it as `.venv-torch`). The interpreter is `$DKVB_TORCH_PYTHON`, else
`<repo>/.venv-torch/bin/python`. Without one the cross-checks skip, except in CI (`CI` set to
true), where they fail: there no encoder test may be skipped.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).with_name("torch_reference.py")
ENV_VAR = "DKVB_TORCH_PYTHON"
DEFAULT = REPO / ".venv-torch" / "bin" / "python"
# Building ResNet-50 / ViT-B/32 and saving them takes about 20 s on a loaded 2-core machine.
TIMEOUT_S = 600


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def torch_python() -> pathlib.Path:
    """The torch venv's interpreter; skips (fails in CI) when there is none."""
    path = pathlib.Path(os.environ.get(ENV_VAR) or DEFAULT)
    if path.exists():
        return path
    why = f"no torch interpreter at {path} (set ${ENV_VAR}, or build .venv-torch as .ci/run does)"
    if in_ci():
        pytest.fail(f"CI runs every torch cross-check: {why}.")
    pytest.skip(f"torch cross-check skipped: {why}")


def run_torch(command: str, out_dir: pathlib.Path, *args: str) -> dict[str, np.ndarray]:
    """Runs `torch_reference.py COMMAND [ARGS] OUT_DIR`; returns its `reference.npz` arrays."""
    python = torch_python()
    # The script imports only NumPy and torch packages; keep the suite's env (JAX flags) out.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "PYTHON"))}
    proc = subprocess.run(
        [str(python), str(SCRIPT), command, *args, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(f"{python} {SCRIPT.name} {command} failed:\n{proc.stderr[-4000:]}")
    with np.load(out_dir / "reference.npz") as f:
        return {k: f[k] for k in f.files}
