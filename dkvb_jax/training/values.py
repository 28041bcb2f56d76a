"""Value training with labels: optax over ``params`` only, keys frozen.

Each epoch is one jitted `lax.scan` over shuffled, padded minibatches. Unless the splitter is
learned, the inputs' codes are computed once up front: with frozen keys and fixed masks they
are exactly what every step would recompute, and a step becomes a gather and a scatter-add.

One driver, :func:`train_values`, serves one device and a device mesh (each minibatch split
over ``'data'``), with optional per-epoch checkpoints to resume from. Every step goes through
:func:`optimizer_step`, which keeps the values of masked pairs bit-unchanged, so training after
unlearning never moves what was switched off.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dkvb_jax import _batching, _validation
from dkvb_jax._progress import note, progress_bar
from dkvb_jax.checkpoints.resumable import EpochCheckpoints, run_identity
from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB
from dkvb_jax.parallel import mesh as mesh_lib
from dkvb_jax.parallel.mesh import DATA
from dkvb_jax.training import _rows
from dkvb_jax.training.codes import compute_codes
from dkvb_jax.unlearning.masking import masked_pairs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValueTrainConfig:
    """Value-training settings (paper: SGD lr 0.3, no weight decay, clip 1.0, batch 256, LS 0.1).

    Attributes:
      learning_rate: Peak learning rate.
      epochs: Passes over the labelled data.
      batch_size: Examples per step.
      optimizer: ``sgd`` or ``adam``.
      momentum: SGD momentum (0 in the paper).
      clip_norm: Global-norm gradient clipping; 0 disables it.
      label_smoothing: Label smoothing of the cross-entropy.
      schedule: ``constant`` or ``cosine`` decay over all steps.
      weight_decay: Decoupled weight decay (0 in the paper): with ``adam`` this is AdamW, with
        ``sgd`` the decay is added to the (clipped) gradient. It never reaches masked pairs.
    """

    learning_rate: float = 0.3
    epochs: int = 10
    batch_size: int = 256
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0

    def __post_init__(self):
        _validation.check_positive_int(self.epochs, "ValueTrainConfig.epochs")
        _validation.check_positive_int(self.batch_size, "ValueTrainConfig.batch_size")
        if not self.learning_rate > 0:
            raise ValueError(
                f"ValueTrainConfig.learning_rate must be positive, got {self.learning_rate}."
            )
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(
                f"ValueTrainConfig.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}."
            )
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"ValueTrainConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"ValueTrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}."
            )
        if self.clip_norm < 0:
            raise ValueError(f"ValueTrainConfig.clip_norm must be >= 0, got {self.clip_norm}.")
        if not 0.0 <= self.weight_decay < float("inf"):
            raise ValueError(
                f"ValueTrainConfig.weight_decay must be a finite number >= 0, got "
                f"{self.weight_decay}."
            )

    def optimizer_for(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """The optax optimiser; one object per `(config, steps_per_epoch)`.

        The jitted epoch takes the optimiser as a static argument, so handing out the same
        object lets a second run with the same settings reuse the compiled epoch.
        """
        return _optimizer(self, steps_per_epoch)


@functools.lru_cache(maxsize=32)
def _optimizer(config: ValueTrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    lr = config.learning_rate
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, config.epochs * steps_per_epoch)
    if config.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=config.momentum or None)
        if config.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    elif config.weight_decay:
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    else:
        opt = optax.adam(lr)
    if config.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    return opt


class TrainHistory(NamedTuple):
    """Per-epoch metrics of value training (lists of floats, one entry per epoch)."""

    loss: list[float]
    accuracy: list[float]
    eval_accuracy: list[float]


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Per-example cross-entropy `[batch]` against label-smoothed one-hot targets."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def optimizer_step(
    tx: optax.GradientTransformation, grads: dict, opt_state, params: dict, variables: dict
) -> tuple[dict, optax.OptState]:
    """One optimiser update of ``params`` that leaves the values of masked pairs bit-unchanged.

    A masked pair gets a zero gradient, but its *update* need not be zero: weight decay, SGD
    momentum or Adam moments carried over from training before unlearning all move it. So the
    new ``values`` keep their old entries wherever a pair is masked in either mode
    (:func:`dkvb_jax.unlearning.masked_pairs`), whatever `tx` is. Jittable; shared by every
    value-training step of the library.

    Args:
      tx: the optimiser.
      grads: gradient of the loss, same structure as `params`.
      opt_state: `tx`'s state.
      params: ``params`` collection; ``params/values`` is `[codebooks, keys, value_dim]`.
      variables: the model's variables, whose ``mask`` collection names the masked pairs.

    Returns:
      The new params and optimiser state.
    """
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    masked = masked_pairs(variables)[..., None]  # [codebooks, keys, 1]

    # A select, not a zeroed update: `old + 0` would still turn -0.0 into +0.0.
    def keep_masked(path, old, updated):
        if len(path) == 1 and getattr(path[0], "key", None) == "values":
            return jnp.where(masked, old, updated)
        return updated

    return jax.tree_util.tree_map_with_path(keep_masked, params, new), opt_state


def _forward(model: DKVB, use_codes: bool):
    if use_codes:
        return lambda v, inputs: model.apply(v, *inputs, method=DKVB.decode_codes)
    return lambda v, inputs: model.apply(v, inputs[0])


def _loss_and_grads(forward, smoothing, axis, variables, params, inputs, y, w):
    """Mean loss, its gradient and the correct count of one batch (`w`: bool `[batch]`).

    With `axis` (inside `shard_map`) the batch is one device's share: each device divides its
    weighted loss sum by the *global* weight, so the `psum` of the gradients is exactly the
    gradient of the global mean loss, whatever the split (padding rows have weight 0). Without
    it the same code is the plain one-device mean.
    """

    def total(t):
        return t if axis is None else jax.lax.psum(t, axis)

    total_w = jnp.maximum(total(w.astype(jnp.float32).sum()), 1.0)

    def loss_fn(p):
        logits = forward({**variables, "params": p}, inputs)
        losses = smoothed_cross_entropy(logits, y, smoothing)
        return jnp.sum(losses * w.astype(losses.dtype)) / total_w, logits

    if axis is not None:
        # Differentiate w.r.t. a per-device copy: the gradient of a replicated input would be
        # summed over devices implicitly; marking it varying keeps the one psum explicit.
        params = jax.lax.pcast(params, axis, to="varying")
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return total((loss, grads, jnp.sum((logits.argmax(-1) == y) & w)))


@dataclasses.dataclass(frozen=True)
class EpochSpec:
    """The static part of a value-training epoch: what to run, how it is batched and where.

    Hashable, so one compiled epoch serves every epoch of a run (a static jit argument).

    Attributes:
      model: the DKVB module.
      use_codes: train on precomputed codes (False for the learned splitter: on embeddings).
      tx: the optimiser.
      batch_size: minibatch size (divisible by the mesh's ``'data'`` size on a mesh).
      smoothing: label smoothing of the cross-entropy.
      mesh: split every minibatch over this mesh's ``'data'`` axis; None for one device.
    """

    model: DKVB
    use_codes: bool
    tx: optax.GradientTransformation
    batch_size: int
    smoothing: float
    mesh: Mesh | None = None


@functools.partial(jax.jit, static_argnames=("spec",))
def _train_epoch(spec: EpochSpec, variables, opt_state, inputs, y, rng):
    """One epoch: a `lax.scan` over shuffled, padded minibatches of `(inputs, y)` `[n, ...]`.

    On a mesh each minibatch is split over ``'data'``; the shuffle, padding and update order
    are those of one device, so the same `rng` gives the same parameters up to float summation
    order.

    Returns:
      `(params, opt_state, mean loss, accuracy)` over the epoch.
    """
    n, tx, mesh = y.shape[0], spec.tx, spec.mesh
    perm = jax.random.permutation(rng, n)
    batched = [_batching.pad_to_batches(a[perm], spec.batch_size)[0] for a in (*inputs, y)]
    weights = _batching.pad_to_batches(jnp.ones((n,)), spec.batch_size)[1]
    frozen = {k: v for k, v in variables.items() if k != "params"}
    grads_fn = functools.partial(
        _loss_and_grads, _forward(spec.model, spec.use_codes), spec.smoothing
    )
    if mesh is None:
        grads_fn = functools.partial(grads_fn, None)
    else:
        split = NamedSharding(mesh, P(None, DATA))
        batched, weights = jax.lax.with_sharding_constraint((batched, weights), split)
        specs = (P(), P(), P(DATA), P(DATA), P(DATA))
        grads_fn = jax.shard_map(
            functools.partial(grads_fn, DATA), mesh=mesh, in_specs=specs, out_specs=P()
        )

    def step(carry, batch):
        params, opt_state = carry
        *xb, yb, wb = batch
        loss, grads, correct = grads_fn(frozen, params, tuple(xb), yb, wb)
        params, opt_state = optimizer_step(tx, grads, opt_state, params, frozen)
        return (params, opt_state), (loss * wb.sum(), correct)

    (params, opt_state), (losses, correct) = jax.lax.scan(
        step, (variables["params"], opt_state), (*batched, weights)
    )
    return params, opt_state, losses.sum() / n, correct.sum() / n


@functools.partial(jax.jit, static_argnames=("model", "use_codes", "batch_size"))
def _accuracy(model, use_codes, variables, inputs, y, batch_size=1024):
    forward = _forward(model, use_codes)
    pred = _batching.batched_apply(lambda b: forward(variables, b).argmax(-1), inputs, batch_size)
    return jnp.mean(pred == y)


def _eval_fn(model: DKVB, variables: dict, eval_data, use_codes: bool, mesh: Mesh | None):
    """Validates `(x_eval, y_eval)` once and returns `variables -> accuracy` (None without data).

    Codes of the evaluation inputs are computed once: keys and masks do not change in training.
    On a mesh they are replicated next to the (replicated) variables.
    """
    if eval_data is None:
        return None
    cfg = model.config
    xe, ye = eval_data
    _validation.check_embeddings(xe, cfg.embed_dim, name="eval embeddings", allow_tokens=False)
    _validation.check_labels(ye, cfg.num_classes, n=xe.shape[0], name="eval labels")
    inputs = compute_codes(model, variables, xe, mesh=mesh) if use_codes else (jnp.asarray(xe),)
    inputs, ye = _rows.replicate((inputs, jnp.asarray(ye)), mesh)
    return lambda v: float(_accuracy(model, use_codes, v, inputs, ye))


def _record_epoch(history: TrainHistory, loss, acc, variables, evaluate, config) -> None:
    """Appends one epoch's metrics; stops with a clear error when the loss is not finite."""
    loss = float(loss)
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"value training diverged (loss {loss}) at epoch {len(history.loss) + 1}; lower "
            f"ValueTrainConfig.learning_rate (now {config.learning_rate}) or keep clipping on."
        )
    history.loss.append(loss)
    history.accuracy.append(float(acc))
    if evaluate is not None:
        history.eval_accuracy.append(evaluate(variables))


def _batch_size(config: ValueTrainConfig, n: int, mesh: Mesh | None) -> int:
    batch_size = min(config.batch_size, n)
    size = 1 if mesh is None else mesh_lib.data_size(mesh)
    if batch_size % size:
        raise InputError(
            f"batch size {batch_size} (ValueTrainConfig.batch_size={config.batch_size}, n={n}) "
            f"must be divisible by the {size} devices of the mesh's 'data' axis so every device "
            "gets an equal share of each step; pick a multiple of the data-axis size."
        )
    return batch_size


def train_values(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    *,
    key: jax.Array,
    config: ValueTrainConfig = ValueTrainConfig(),
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    mesh: Mesh | None = None,
    valid: np.ndarray | jax.Array | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    max_to_keep: int = 3,
    on_epoch_end: Callable[[int, dict, TrainHistory], None] | None = None,
) -> tuple[dict, TrainHistory]:
    """Trains the values (and decoder/learned-splitter weights) with labels; keys stay frozen.

    After unlearning: pairs masked in either mode keep their values bit for bit, whatever the
    optimiser (weight decay included; see :func:`optimizer_step`), and the masks are never
    cleared, so continued training cannot bring back what masking or hard deletion removed.
    It *can* relearn a forgotten class through other, unmasked keys: inputs of that class fall
    back to their next-nearest active keys, and training on them writes the class into those
    keys' values. So continue training on retained data only.

    On a mesh every minibatch is split over the ``'data'`` axis and the gradients summed over
    it: the result equals the one-device result up to float summation order. With
    `checkpoint_dir` each epoch is checkpointed, and a run interrupted and called again on the
    same directory resumes after its latest complete epoch and ends bit-identical to an
    uninterrupted one; a directory written by another run (model, training config, data,
    initial variables or key) is refused.

    Args:
      model: The DKVB module.
      variables: Its variables (keys already fitted).
      x: embeddings `[n, embed_dim]` (host arrays, or global arrays split over ``'data'``).
      y: int labels `[n]`.
      key: PRNG key for shuffling; the same key gives the same result.
      config: Optimisation settings.
      eval_data: optional `(x_eval, y_eval)` whose accuracy is reported per epoch.
      progress: Show a progress bar over epochs.
      mesh: split every minibatch over this mesh's ``'data'`` axis (`config.batch_size` must
        be divisible by its size); None trains on one device.
      valid: optional bool `[n]` marking real rows; pass the one from
        :func:`dkvb_jax.parallel.distributed.global_batch`, whose padding rows would otherwise
        be trained on as extra copies of example 0. Training then runs on exactly the real rows.
      checkpoint_dir: checkpoint ``params``, the optimiser state and the history here after
        every epoch, and resume from the latest checkpoint of this same run.
      max_to_keep: how many of the newest epoch checkpoints to keep.
      on_epoch_end: called as `on_epoch_end(epoch, variables, history)` after each epoch (and
        its checkpoint) is complete; `epoch` counts from 1.

    Returns:
      New variables (only ``params`` changed; replicated on a mesh) and the per-epoch
      :class:`TrainHistory` (restored epochs included).

    Raises:
      CheckpointError: `checkpoint_dir` holds checkpoints of a different run, or a corrupt one.
    """
    cfg = model.config
    _rows.check_embeddings(x, cfg.embed_dim, mesh)
    x, y = _rows.real_rows(valid, mesh, x, y)
    _validation.check_labels(y, cfg.num_classes, n=x.shape[0])
    _validation.check_positive_int(max_to_keep, "max_to_keep")
    n = x.shape[0]
    batch_size = _batch_size(config, n, mesh)
    identity = None if checkpoint_dir is None else run_identity(model, variables, x, y, key, config)
    variables = _rows.replicate(variables, mesh)
    use_codes = cfg.splitter != "learned"
    inputs = compute_codes(model, variables, x, mesh=mesh) if use_codes else (jnp.asarray(x),)
    evaluate = _eval_fn(model, variables, eval_data, use_codes, mesh)
    tx = config.optimizer_for(steps_per_epoch=-(-n // batch_size))
    spec = EpochSpec(model, use_codes, tx, batch_size, config.label_smoothing, mesh)
    # On a mesh scalars such as the step count would start on one device; a restore takes its
    # shardings from this state, so all of it goes where the epoch runs.
    opt_state = _rows.replicate(tx.init(variables["params"]), mesh)
    y = jnp.asarray(y, jnp.int32)
    epoch_keys = jax.random.split(key, config.epochs)

    with EpochCheckpoints(checkpoint_dir, identity, max_to_keep=max_to_keep) as ckpt:
        start, params, opt_state, saved = ckpt.restore(variables["params"], opt_state)
        history = TrainHistory([], [], []) if saved is None else TrainHistory(**saved)
        variables = {**variables, "params": params}
        if start and progress:
            note(
                f"resuming value training from epoch {start} of {config.epochs} ({checkpoint_dir})"
            )
        bar = progress_bar(
            range(start, config.epochs),
            desc="value training",
            initial=start,
            total=config.epochs,
            disable=not progress,
        )
        for epoch in bar:
            params, opt_state, loss, acc = _train_epoch(
                spec, variables, opt_state, inputs, y, epoch_keys[epoch]
            )
            variables = {**variables, "params": params}
            _record_epoch(history, loss, acc, variables, evaluate, config)
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}", acc=f"{history.accuracy[-1]:.3f}")
            ckpt.save(epoch + 1, params, opt_state, history._asdict())
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, variables, history)
    return variables, history
