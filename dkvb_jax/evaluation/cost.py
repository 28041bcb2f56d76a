"""One cost record for every method: wall time and XLA-counted FLOPs, forward and backward apart.

FLOPs are never hand-counted: each jitted function is lowered and compiled ahead of time, and its
FLOPs come from XLA's cost analysis of that executable; a method's total is the per-call count
times the number of calls. The same compiled executable is then the one that runs, so the count
describes exactly the code that was timed.

Counting rule for a training step (documented here once, used by every baseline):
  * ``forward_flops``  per call = flops(loss function alone, compiled on the same batch shapes);
  * ``backward_flops`` per call = flops(value_and_grad of the loss) - flops(loss alone);
  * the optimizer update, flops(full step) - flops(value_and_grad), is reported in
    ``extra['optimizer_flops']`` and included in ``total_flops``.
A linear layer's weight gradient costs about one forward matmul, so its value_and_grad costs about
twice its forward (no input gradient is needed: embeddings are frozen).

XLA's cost analysis counts the body of a while loop once, whatever its trip count, so a program
built on ``lax.map``/``scan`` (a chunked or blocked nearest-key search, a batched evaluation) is
undercounted. Such FLOPs are counted on a loop-free equivalent of the same computation:
:func:`dense_lookup_model` for DKVB lookups, one batch spanning every row for evaluations.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

__all__ = [
    "CostRecord",
    "Timer",
    "compile_with_flops",
    "dense_lookup_model",
    "flops_of",
    "forward_cost",
    "step_flops",
]


def flops_of(compiled: Any) -> float:
    """FLOPs of a compiled executable from XLA's cost analysis.

    Args:
      compiled: a ``jax.stages.Compiled`` (``jax.jit(f).lower(...).compile()``).

    Returns:
      The ``'flops'`` entry. jax 0.12 returns a dict; older releases returned a list with one dict
      per device program, which is summed here so both work.

    Raises:
      ValueError: if the backend gives no cost analysis or no ``'flops'`` entry.
    """
    analysis = compiled.cost_analysis()
    if analysis is None:
        raise ValueError(
            "XLA returned no cost analysis for this executable; FLOPs unavailable on this backend."
        )
    if isinstance(analysis, Mapping):
        analysis = [analysis]
    total = 0.0
    for entry in analysis:
        if "flops" not in entry:
            raise ValueError(f"XLA cost analysis has no 'flops' entry (keys: {sorted(entry)}).")
        total += max(float(entry["flops"]), 0.0)
    return total


def dense_lookup_model(model: Any) -> Any:
    """The same DKVB with a loop-free lookup (dense, one chunk), to count its FLOPs.

    It computes the same squared distances as the blocked, chunked search, without the loops
    XLA's cost analysis counts once. Its variables are interchangeable with `model`'s.
    """
    return type(model)(dataclasses.replace(model.config, lookup_method="dense", lookup_chunk=0))


def compile_with_flops(
    fn: Callable[..., Any], *args: Any, static_argnums: tuple[int, ...] = ()
) -> tuple[Any, float]:
    """Compiles ``fn`` ahead of time for ``args`` and returns ``(compiled, flops per call)``.

    Call the returned executable with arguments of the same shapes and dtypes as ``args``.
    """
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    return compiled, flops_of(compiled)


def step_flops(
    loss_fn: Callable[..., Any],
    step_fn: Callable[..., Any],
    loss_args: tuple[Any, ...],
    step_args: tuple[Any, ...],
) -> tuple[Any, dict[str, float]]:
    """Compiles a training step and splits its FLOPs by the module-level counting rule.

    Args:
      loss_fn: ``loss_fn(params, *rest) -> (scalar, aux)``; differentiated w.r.t. ``params``.
      step_fn: the full jitted training step (gradient + optimizer update).
      loss_args: ``(params, *rest)`` for ``loss_fn``.
      step_args: arguments of ``step_fn``.

    Returns:
      ``(compiled step, {'forward': F, 'backward': B, 'optimizer': O})`` per call.
    """
    _, fwd = compile_with_flops(loss_fn, *loss_args)
    _, fwd_bwd = compile_with_flops(jax.value_and_grad(loss_fn, has_aux=True), *loss_args)
    compiled, full = compile_with_flops(step_fn, *step_args)
    # XLA may fuse or simplify differently across the three programs; clamp so a component is
    # never negative.
    backward = max(fwd_bwd - fwd, 0.0)
    optimizer = max(full - fwd_bwd, 0.0)
    return compiled, {"forward": fwd, "backward": backward, "optimizer": optimizer}


@dataclasses.dataclass(frozen=True)
class CostRecord:
    """Compute spent by one method (an unlearning call, a baseline, an evaluation pass).

    Attributes:
      method: name of the method, e.g. ``'scrub'`` or ``'dkvb-uva'``.
      wall_s: wall-clock seconds of the counted work (compilation excluded).
      forward_flops: total forward FLOPs (per-call XLA count times calls).
      backward_flops: total backward FLOPs; 0 for gradient-free methods such as DKVB masking.
      num_forward_calls: number of forward executions counted.
      num_backward_calls: number of backward executions counted.
      extra: anything else measured, e.g. ``optimizer_flops``, ``monitor_forward_flops``,
        ``epochs``, ``stop_reason``. Values must be JSON-serialisable.
    """

    method: str
    wall_s: float = 0.0
    forward_flops: float = 0.0
    backward_flops: float = 0.0
    num_forward_calls: int = 0
    num_backward_calls: int = 0
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in (
            "wall_s",
            "forward_flops",
            "backward_flops",
            "num_forward_calls",
            "num_backward_calls",
        ):
            value = getattr(self, name)
            if not (value >= 0):  # also rejects NaN
                raise ValueError(f"CostRecord.{name} must be a finite number >= 0, got {value!r}.")

    @property
    def total_flops(self) -> float:
        """Forward + backward + optimizer FLOPs."""
        return (
            self.forward_flops + self.backward_flops + float(self.extra.get("optimizer_flops", 0.0))
        )

    @property
    def gflops(self) -> float:
        return self.total_flops / 1e9

    def add_calls(
        self, per_call: Mapping[str, float], calls: int, *, backward: bool, wall_s: float = 0.0
    ) -> CostRecord:
        """Returns a record with ``calls`` more executions of a step costing ``per_call``.

        Args:
          per_call: ``{'forward': F, 'backward': B, 'optimizer': O}`` (missing entries are 0).
          calls: how many times the step ran.
          backward: whether each call also ran a backward pass.
          wall_s: seconds to add.
        """
        extra = dict(self.extra)
        if per_call.get("optimizer", 0.0):
            extra["optimizer_flops"] = (
                float(extra.get("optimizer_flops", 0.0)) + calls * per_call["optimizer"]
            )
        return dataclasses.replace(
            self,
            wall_s=self.wall_s + wall_s,
            forward_flops=self.forward_flops + calls * per_call.get("forward", 0.0),
            backward_flops=self.backward_flops + calls * per_call.get("backward", 0.0),
            num_forward_calls=self.num_forward_calls + calls,
            num_backward_calls=self.num_backward_calls + (calls if backward else 0),
            extra=extra,
        )

    def with_extra(self, **entries: Any) -> CostRecord:
        return dataclasses.replace(self, extra={**self.extra, **entries})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["extra"] = dict(self.extra)
        out["total_flops"] = self.total_flops
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def forward_cost(
    method: str,
    fn: Callable[..., Any],
    *args: Any,
    calls: int = 1,
    repeat_for_wall: bool = True,
    flops_fn: Callable[..., Any] | None = None,
) -> tuple[Any, CostRecord]:
    """Cost of a gradient-free method: ``calls`` runs of ``fn(*args)`` (e.g. DKVB UvA's lookup pass).

    Compiles ``fn`` once, runs it once (timed, compilation excluded) and scales FLOPs by ``calls``.
    Wall time is the measured single run times ``calls`` when ``repeat_for_wall``.

    Args:
      flops_fn: a loop-free equivalent of ``fn`` (same arguments) whose FLOPs are counted instead,
        for an ``fn`` that loops (see the module docstring); it is compiled, never run.

    Returns:
      ``(output of the timed run, CostRecord with backward_flops == 0)``.
    """
    compiled, flops = compile_with_flops(fn, *args)
    if flops_fn is not None:
        flops = compile_with_flops(flops_fn, *args)[1]
    with Timer() as timer:
        out = jax.block_until_ready(compiled(*args))
    wall = timer.seconds * (calls if repeat_for_wall else 1)
    return out, CostRecord(method, wall_s=wall).add_calls({"forward": flops}, calls, backward=False)


class Timer:
    """Context manager measuring wall seconds (``perf_counter``); read ``.seconds`` after exit."""

    def __enter__(self) -> Timer:
        self.seconds = 0.0
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
