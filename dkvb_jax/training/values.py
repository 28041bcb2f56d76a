"""Value training with labels: optax over ``params`` only, keys frozen.

Each epoch is one jitted `lax.scan` over shuffled, padded minibatches. Unless the splitter is
learned, the inputs' codes are computed once up front: with frozen keys and fixed masks they
are exactly what every step would recompute, and a step becomes a gather and a scatter-add.

Every value-training step (here, in :mod:`dkvb_jax.parallel` and in
:mod:`dkvb_jax.checkpoints`) goes through :func:`optimizer_step`, which keeps the values of
masked pairs bit-unchanged, so training after unlearning never moves what was switched off.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dkvb_jax import _batching, _validation
from dkvb_jax._progress import progress_bar
from dkvb_jax.model import DKVB
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


@functools.partial(jax.jit, static_argnames=("model", "use_codes", "tx", "batch_size", "smoothing"))
def _train_epoch(model, use_codes, tx, batch_size, smoothing, variables, opt_state, inputs, y, rng):
    forward = _forward(model, use_codes)
    n = y.shape[0]
    perm = jax.random.permutation(rng, n)
    batched = [_batching.pad_to_batches(a[perm], batch_size)[0] for a in (*inputs, y)]
    weights = _batching.pad_to_batches(jnp.ones((n,)), batch_size)[1]

    def step(carry, batch):
        params, opt_state = carry
        *xb, yb, wb = batch

        def loss_fn(p):
            logits = forward({**variables, "params": p}, tuple(xb))
            losses = smoothed_cross_entropy(logits, yb, smoothing)
            w = wb.astype(losses.dtype)
            return jnp.sum(losses * w) / jnp.maximum(w.sum(), 1.0), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state = optimizer_step(tx, grads, opt_state, params, variables)
        correct = jnp.sum((logits.argmax(-1) == yb) & wb)
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


def eval_fn(model: DKVB, variables: dict, eval_data, use_codes: bool):
    """Validates `(x_eval, y_eval)` once and returns `variables -> accuracy` (None without data).

    Codes of the evaluation inputs are computed once: keys and masks do not change in training.
    """
    if eval_data is None:
        return None
    cfg = model.config
    xe, ye = eval_data
    _validation.check_embeddings(xe, cfg.embed_dim, name="eval embeddings", allow_tokens=False)
    _validation.check_labels(ye, cfg.num_classes, n=xe.shape[0], name="eval labels")
    inputs = compute_codes(model, variables, xe) if use_codes else (jnp.asarray(xe),)
    ye = jnp.asarray(ye)
    return lambda v: float(_accuracy(model, use_codes, v, inputs, ye))


def record_epoch(history: TrainHistory, loss, acc, variables, evaluate, config) -> None:
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
) -> tuple[dict, TrainHistory]:
    """Trains the values (and decoder/learned-splitter weights) with labels; keys stay frozen.

    After unlearning: pairs masked in either mode keep their values bit for bit, whatever the
    optimiser (weight decay included; see :func:`optimizer_step`), and the masks are never
    cleared, so continued training cannot bring back what masking or hard deletion removed.
    It *can* relearn a forgotten class through other, unmasked keys: inputs of that class fall
    back to their next-nearest active keys, and training on them writes the class into those
    keys' values. So continue training on retained data only.

    Args:
      model: The DKVB module.
      variables: Its variables (keys already fitted).
      x: embeddings `[n, embed_dim]`.
      y: int labels `[n]`.
      key: PRNG key for shuffling; the same key gives the same result.
      config: Optimisation settings.
      eval_data: optional `(x_eval, y_eval)` whose accuracy is reported per epoch.
      progress: Show a progress bar over epochs.

    Returns:
      New variables (only ``params`` changed) and the per-epoch :class:`TrainHistory`.
    """
    cfg = model.config
    _validation.check_embeddings(x, cfg.embed_dim, allow_tokens=False)
    _validation.check_labels(y, cfg.num_classes, n=x.shape[0])
    use_codes = cfg.splitter != "learned"
    inputs = compute_codes(model, variables, x) if use_codes else (jnp.asarray(x),)
    evaluate = eval_fn(model, variables, eval_data, use_codes)

    n = x.shape[0]
    batch_size = min(config.batch_size, n)
    tx = config.optimizer_for(steps_per_epoch=-(-n // batch_size))
    opt_state = tx.init(variables["params"])
    y = jnp.asarray(y, jnp.int32)

    history = TrainHistory([], [], [])
    bar = progress_bar(
        jax.random.split(key, config.epochs), desc="value training", disable=not progress
    )
    for epoch_key in bar:
        params, opt_state, loss, acc = _train_epoch(
            model, use_codes, tx, batch_size, config.label_smoothing,
            variables, opt_state, inputs, y, epoch_key,
        )  # fmt: skip
        variables = {**variables, "params": params}
        record_epoch(history, loss, acc, variables, evaluate, config)
        bar.set_postfix(loss=f"{history.loss[-1]:.4f}", acc=f"{history.accuracy[-1]:.3f}")
    return variables, history
