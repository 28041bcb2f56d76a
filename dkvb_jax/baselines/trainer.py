"""Generic optax training loop shared by every baseline (and by training the original model).

Only ``variables['params']`` is trained; every other collection (DKVB keys, projections, masks) is
passed through unchanged. An epoch runs one or more *phases* (e.g. SCRUB's max-step over forget
batches, then its min-step over retain batches); each phase's epoch is one ahead-of-time
compiled ``lax.scan`` of its training step over the shuffled, padded minibatches, so a cost
measures the method and not one Python dispatch and host round trip per step. XLA's cost
analysis counts a loop body once, so the FLOPs are those of the same step compiled alone, times
the steps that ran (see ``dkvb_jax.evaluation.cost`` for the counting rule).

What the cost record counts: the training steps only. Per-epoch accuracy measurements (the
trajectory and the stopping check) are reported separately as ``extra['monitor_forward_flops']``
and ``extra['monitor_wall_s']``; leaving them out makes the baselines look as cheap as possible,
which is the conservative side for a comparison against DKVB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dkvb_jax._progress import progress_bar
from dkvb_jax.baselines.optim import OptimizerConfig, lr_at_epoch, make_optimizer, set_lr
from dkvb_jax.baselines.stopping import StoppingConfig, stop_reason
from dkvb_jax.baselines.types import (
    ApplyFn,
    NonFiniteLossError,
    Trajectory,
    check_label_space,
    validate_split,
)
from dkvb_jax.evaluation.cost import CostRecord, Timer, step_flops
from dkvb_jax.evaluation.metrics import compiled_accuracy

__all__ = [
    "OptimizerConfig",
    "Phase",
    "TrainConfig",
    "cross_entropy",
    "distill_kl",
    "epoch_batches",
    "fit_classifier",
    "gather_batch",
    "lr_at_epoch",
    "make_epoch",
    "make_optimizer",
    "merge_params",
    "phase_rows",
    "train_loop",
]

Batch = tuple[jax.Array, jax.Array, jax.Array]  # x [b, dim], y [b], weight [b] (0 = padding)
LossFn = Callable[[Any, Any, Any], tuple[jax.Array, Any]]  # (params, context, batch) -> (loss, aux)


def merge_params(variables: Mapping[str, Any], params: Any) -> dict[str, Any]:
    """``variables`` with ``params`` replaced; every other collection is the same object."""
    return {**dict(variables), "params": params}


def cross_entropy(logits: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy; ``weight`` [b] is 0 on padding rows."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(weight * ce) / jnp.maximum(jnp.sum(weight), 1.0)


def distill_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float, weight: jax.Array
) -> jax.Array:
    """KL(teacher || student) at ``temperature``, times T^2, weighted mean over the batch (SCRUB's DistillKL)."""
    log_ps = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return jnp.sum(weight * kl) / jnp.maximum(jnp.sum(weight), 1.0) * temperature**2


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled minibatch indices for one epoch over ``n`` examples.

    Returns:
      ``(idx [num_batches, batch_size] int32, weight [num_batches, batch_size] float32)``: the last
      batch is padded (index 0, weight 0) so every step has one static shape and one compilation.
    """
    perm = np.asarray(jax.random.permutation(key, n))
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    idx = np.concatenate([perm, np.zeros(pad, perm.dtype)]).reshape(nb, batch_size).astype(np.int32)
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(
        nb, batch_size
    )
    return idx, weight


def _cycled_batches(key: jax.Array, n: int, batch_size: int, num_batches: int) -> np.ndarray:
    """[num_batches, batch_size] indices drawn from fresh permutations of ``n``, cycled as needed."""
    need = num_batches * batch_size
    keys = jax.random.split(key, -(-need // n))
    idx = np.concatenate([np.asarray(jax.random.permutation(k, n)) for k in keys])[:need]
    return idx.reshape(num_batches, batch_size).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One pass of an epoch: a loss over shuffled minibatches of ``(x, y)``.

    Attributes:
      name: label for progress bars and the cost record (e.g. ``'min'``, ``'max'``).
      loss_fn: ``(params, context, batch) -> (loss, aux)``; ``batch`` is ``(x, y, weight)`` or,
        with ``paired``, ``((x, y, weight), (x2, y2, weight2))``.
      x, y: the stream the pass iterates over once per epoch.
      batch_size: minibatch size of that stream.
      paired: optional second stream ``(x2, y2, batch_size2)`` drawn cyclically, one batch per
        step (NegGrad+'s forget batches alongside retain batches).
      active: ``active(epoch) -> bool`` (1-based); e.g. SCRUB runs its max-step only early.
      context: constant pytree passed to ``loss_fn`` (other collections, teacher variables).
    """

    name: str
    loss_fn: LossFn
    x: jax.Array
    y: jax.Array
    batch_size: int
    paired: tuple[jax.Array, jax.Array, int] | None = None
    active: Callable[[int], bool] = lambda epoch: True
    context: Any = None


def _make_step(optimizer: optax.GradientTransformation, loss_fn: LossFn):
    def step(params, opt_state, context, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, context, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


# One epoch's minibatch rows of a phase: (idx [nb, bs], weight [nb, bs], idx2 [nb, bs2] | None).
BatchRows = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def phase_rows(phase: Phase, key: jax.Array) -> BatchRows:
    """The shuffled, padded minibatch rows of one epoch of ``phase`` (see :func:`epoch_batches`).

    Returns:
      ``(idx [nb, bs], weight [nb, bs], idx2)``: ``idx2`` [nb, bs2] are the paired stream's rows,
      drawn cyclically (one batch per step), or None for an unpaired phase.
    """
    k1, k2 = jax.random.split(key)
    idx, w = epoch_batches(k1, phase.x.shape[0], phase.batch_size)
    if phase.paired is None:
        return idx, w, None
    x2, _, bs2 = phase.paired
    return idx, w, _cycled_batches(k2, x2.shape[0], bs2, idx.shape[0])


# A phase's data: (x [n, dim], y [n], x2 [n2, dim] | None, y2 [n2] | None).
Streams = tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]


def _streams(phase: Phase) -> Streams:
    x2, y2 = (None, None) if phase.paired is None else phase.paired[:2]
    return phase.x, phase.y, x2, y2


def gather_batch(streams: Streams, rows: BatchRows) -> Any:
    """The ``loss_fn`` batch of one step from a phase's ``streams`` and one step's ``rows``
    (``idx [bs]``, ``weight [bs]``, ``idx2 [bs2] | None``): ``(x, y, weight)``, or a pair of
    them for a paired phase (the second stream's weights all 1)."""
    x, y, x2, y2 = streams
    idx, w, idx2 = rows
    batch = (x[idx], y[idx], w)
    if x2 is None:
        return batch
    return batch, (x2[idx2], y2[idx2], jnp.ones(idx2.shape, jnp.float32))


def make_epoch(optimizer: optax.GradientTransformation, loss_fn: LossFn):
    """One epoch of a phase as a single ``lax.scan`` over its minibatches (jit it).

    ``epoch(params, opt_state, context, streams, rows) -> (params, opt_state, losses [nb])``:
    the same steps, in the same order, as calling the training step once per row of ``rows``,
    without a Python dispatch or a host round trip per step.
    """
    step = _make_step(optimizer, loss_fn)

    def epoch(params, opt_state, context, streams, rows):
        def body(carry, step_rows):
            params, opt_state, loss = step(*carry, context, gather_batch(streams, step_rows))
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), rows)
        return params, opt_state, losses

    return epoch


def _all_finite(tree: Any) -> bool:
    leaves = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return bool(jnp.all(jnp.stack(leaves))) if leaves else True


def train_loop(
    method: str,
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    phases: list[Phase],
    *,
    key: jax.Array,
    optimizer: OptimizerConfig,
    stopping: StoppingConfig,
    monitor: Mapping[str, tuple[jax.Array, jax.Array] | None],
    progress: bool = True,
    keep_snapshots: bool = False,
    eval_batch_size: int = 1024,
) -> tuple[dict[str, Any], CostRecord, Trajectory, list[Any]]:
    """Runs epochs of ``phases`` until the stopping rule fires.

    Args:
      method: name for the cost record and trajectory.
      apply_fn: ``apply_fn(variables, x) -> logits``.
      variables: model variables; only ``variables['params']`` is trained.
      phases: the passes of each epoch, in order.
      key: PRNG key for shuffling.
      optimizer: optimizer config (one optimizer state is shared by all phases, as in SCRUB).
      stopping: stopping rule; its target and patience read ``monitor[stopping.split]``
        (which must then be given); with neither set only ``max_epochs`` applies.
      monitor: splits measured after every epoch, any of ``'forget'``, ``'retain'``,
        ``'val_forget'``, ``'val_retain'`` (None entries skipped).
      progress: show a tqdm bar over epochs.
      keep_snapshots: also return the params after every epoch (for SCRUB+R rewinding).
      eval_batch_size: batch size of the monitoring passes.

    Returns:
      ``(new_variables, cost, trajectory, snapshots)``; ``snapshots[i]`` are the params after
      epoch i (index 0 = initial) when ``keep_snapshots``, else empty.

    Raises:
      NonFiniteLossError: when a loss or a parameter becomes NaN/inf; nothing is returned then.
    """
    variables = dict(variables)
    monitors = _checked_monitors(method, variables, stopping, monitor)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    opt = make_optimizer(optimizer)
    opt_state = opt.init(params)
    compiled = _compile_phases(phases, opt, rest, params, opt_state)
    meter, meter_flops = compiled_accuracy(
        apply_fn, variables, monitors, batch_size=eval_batch_size
    )
    accs, monitor_wall = _measure(meter, rest, params)
    monitor_calls = 1
    cost, traj = CostRecord(method), Trajectory(method)
    traj.append(epoch=0, wall_s=0.0, **{f"{k}_acc": v for k, v in accs.items()})
    snapshots = [params] if keep_snapshots else []
    forget_hist = [accs[stopping.split]] if stopping.reads_accuracy else None
    reason = None

    bar = progress_bar(
        range(1, stopping.max_epochs + 1), desc=method, disable=not progress, leave=False
    )
    for epoch in bar:
        opt_state = set_lr(opt_state, lr_at_epoch(optimizer, epoch))
        key, epoch_key = jax.random.split(key)
        params, opt_state, cost, epoch_loss = _run_epoch(
            method, epoch, epoch_key, phases, compiled, params, opt_state, cost
        )
        accs, seconds = _measure(meter, rest, params)
        monitor_wall, monitor_calls = monitor_wall + seconds, monitor_calls + 1
        traj.append(
            epoch=epoch,
            loss=epoch_loss,
            wall_s=cost.wall_s,
            **{f"{k}_acc": v for k, v in accs.items()},
        )
        if keep_snapshots:
            snapshots.append(params)
        bar.set_postfix({k: f"{v:.3f}" for k, v in accs.items()})
        if forget_hist is not None:
            forget_hist.append(accs[stopping.split])
            reason = stop_reason(forget_hist, stopping)
        elif epoch >= stopping.max_epochs:
            reason = "max_epochs"
        if reason:
            traj.stop_epoch, traj.stop_reason = epoch, reason
            break
    bar.close()

    cost = cost.with_extra(
        epochs=traj.stop_epoch,
        stop_reason=traj.stop_reason,
        monitor_forward_flops=float(monitor_calls * meter_flops),
        monitor_wall_s=monitor_wall,
    )
    return merge_params(variables, params), cost, traj, snapshots


def _checked_monitors(method, variables, stopping, monitor) -> dict[str, Any]:
    """The monitored splits that were given; refuses variables without ``params`` and a
    stopping rule whose split is not monitored."""
    if "params" not in variables:
        raise ValueError(
            f"variables must contain a 'params' collection to train; got collections {sorted(variables)}."
        )
    monitors = {name: split for name, split in monitor.items() if split is not None}
    if stopping.reads_accuracy and stopping.split not in monitors:
        raise ValueError(
            f"{method}: StoppingConfig.split={stopping.split!r} is not among the monitored splits "
            f"{sorted(monitors)}; pass it in `monitor` (e.g. data.val_forget_x/val_forget_y) or "
            "set forget_target=None and patience=None."
        )
    return monitors


# A phase compiled for the loop: (epoch_fn, FLOPs of one step, context, streams).
CompiledPhase = tuple[Any, float, Any, Streams]


def _compile_phases(phases, opt, rest, params, opt_state) -> list[CompiledPhase]:
    """Every phase's epoch compiled once (static padded shapes), with its per-step FLOPs.

    XLA counts a scan body once, so the per-step FLOPs come from the step compiled alone (the
    scan's body); the loop multiplies them by the steps that ran.
    """
    compiled = []
    for phase in phases:
        context, streams = (rest, phase.context), _streams(phase)
        rows = phase_rows(phase, jax.random.key(0))
        example = gather_batch(streams, jax.tree.map(lambda r: r[0], rows))
        _, per_call = step_flops(
            phase.loss_fn,
            _make_step(opt, phase.loss_fn),
            (params, context, example),
            (params, opt_state, context, example),
        )
        epoch_fn = (
            jax.jit(make_epoch(opt, phase.loss_fn))
            .lower(params, opt_state, context, streams, rows)
            .compile()
        )
        compiled.append((epoch_fn, per_call, context, streams))
    return compiled


def _run_epoch(method, epoch, key, phases, compiled, params, opt_state, cost: CostRecord):
    """One epoch of every active phase, timed into `cost`.

    Returns:
      ``(params, opt_state, cost, mean loss or None when no phase ran)``.

    Raises:
      NonFiniteLossError: a loss or a parameter became NaN/inf.
    """
    losses = []
    for i, (phase, (epoch_fn, per_call, context, streams)) in enumerate(
        zip(phases, compiled, strict=True)
    ):
        if not phase.active(epoch):
            continue
        # Shuffling is data loading: on the device before the clock starts.
        rows = jax.device_put(phase_rows(phase, jax.random.fold_in(key, i)))
        with Timer() as t:
            params, opt_state, phase_losses = epoch_fn(params, opt_state, context, streams, rows)
            jax.block_until_ready(params)
        losses.append(phase_losses)
        cost = cost.add_calls(per_call, rows[0].shape[0], backward=True, wall_s=t.seconds)
    epoch_loss = float(jnp.mean(jnp.concatenate(losses))) if losses else None
    if (epoch_loss is not None and not np.isfinite(epoch_loss)) or not _all_finite(params):
        raise NonFiniteLossError(
            f"{method}: loss or parameters became NaN/inf in epoch {epoch} (mean loss {epoch_loss}); "
            "lower the learning rate or, for NegGrad+, raise alpha. No results were written."
        )
    return params, opt_state, cost, epoch_loss


def _measure(meter, rest, params) -> tuple[dict[str, float], float]:
    """Accuracy of every monitored split, and the seconds it took (counted apart from cost)."""
    with Timer() as t:
        accs = {name: float(acc) for name, acc in meter(merge_params(rest, params)).items()}
    return accs, t.seconds


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Plain supervised training (the original model and the retrain oracle).

    Attributes:
      epochs: number of epochs.
      batch_size: minibatch size.
      optimizer: optimizer config.
      progress: show a progress bar.
    """

    epochs: int = 30
    batch_size: int = 256
    optimizer: OptimizerConfig = OptimizerConfig(
        name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4
    )
    progress: bool = False

    def __post_init__(self):
        name = type(self).__name__  # RetrainConfig shares these fields
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"{name}.epochs must be an int >= 1, got {self.epochs!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"{name}.batch_size must be an int >= 1, got {self.batch_size!r}.")


def ce_loss(apply_fn: ApplyFn) -> LossFn:
    """Cross-entropy loss on a ``(x, y, weight)`` batch, for ``train_loop``."""

    def loss_fn(params, context, batch):
        rest, _ = context
        x, y, w = batch
        logits = apply_fn(merge_params(rest, params), x)
        return cross_entropy(logits, y, w), None

    return loss_fn


def ce_phase(name: str, apply_fn: ApplyFn, x, y, batch_size: int) -> Phase:
    """A cross-entropy phase over ``(x [n, dim], y [n])`` in batches of at most ``batch_size``."""
    return Phase(name, ce_loss(apply_fn), x, y, min(batch_size, x.shape[0]))


def fit_classifier(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    x: jax.Array,
    y: jax.Array,
    config: TrainConfig = TrainConfig(),
    *,
    key: jax.Array,
    method: str = "train",
    monitor: Mapping[str, tuple[jax.Array, jax.Array] | None] | None = None,
) -> tuple[dict[str, Any], CostRecord, Trajectory]:
    """Trains ``variables['params']`` with cross-entropy on ``(x, y)`` for ``config.epochs`` epochs.

    Args:
      apply_fn, variables: the model (e.g. ``LinearHead(10).apply`` and its init variables).
      x: [n, dim] embeddings; y: [n] int labels.
      config: training config.
      key: PRNG key for shuffling.
      method: name in the cost record.
      monitor: extra splits to record per epoch (default: training accuracy as ``'retain'``).

    Returns:
      ``(trained variables, cost, trajectory)``.
    """
    validate_split(x, y, "training set")
    x, y = jnp.asarray(x), jnp.asarray(y)
    check_label_space(apply_fn, variables, x, y)
    phase = ce_phase("train", apply_fn, x, y, config.batch_size)
    stopping = StoppingConfig(max_epochs=config.epochs, forget_target=None, patience=None)
    new_vars, cost, traj, _ = train_loop(
        method,
        apply_fn,
        variables,
        [phase],
        key=key,
        optimizer=config.optimizer,
        stopping=stopping,
        monitor=monitor if monitor is not None else {"retain": (x, y)},
        progress=config.progress,
    )
    return new_vars, cost, traj
