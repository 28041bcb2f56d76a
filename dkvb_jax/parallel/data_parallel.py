"""Data-parallel versions of the library's data passes over a device mesh.

Every function takes the same inputs as its single-device counterpart in
:mod:`dkvb_jax.training` plus a `mesh` (see :mod:`dkvb_jax.parallel.mesh`), and returns the same
result: integer statistics (codes, usage histograms, correct counts) are identical, float
statistics (EMA sums, gradients) agree up to summation order.

Examples are padded to a multiple of the data-axis size and padding rows carry weight 0, so a
ragged last batch is never dropped and never counted. Value training and key fitting shuffle
their rows, so there the rows that `valid` marks as padding (as from
:func:`dkvb_jax.parallel.distributed.global_batch`) are removed first, not weighted.
Collectives are explicit (`jax.shard_map` + `psum`) where a statistic is summed over devices;
evaluation is a plain `jax.jit` over sharded inputs so that codebook-sharded variables (a
``data x codebook`` mesh) stay sharded.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dkvb_jax import _batching, _validation
from dkvb_jax._progress import progress_bar
from dkvb_jax.model import DKVB
from dkvb_jax.model.lookup import auto_chunk
from dkvb_jax.parallel import mesh as mesh_lib
from dkvb_jax.parallel.mesh import DATA
from dkvb_jax.training import keys as keys_lib
from dkvb_jax.training import values as values_lib
from dkvb_jax.training.usage import usage_from_codes as _usage_from_codes
from dkvb_jax.training.values import TrainHistory, ValueTrainConfig, smoothed_cross_entropy


def _check_embeddings(x, embed_dim: int) -> None:
    """The core's input check; a multi-host global array is checked shard by shard, since each
    process can only read its own rows."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        for shard in x.addressable_shards:
            _validation.check_embeddings(shard.data, embed_dim, allow_tokens=False)
        return
    _validation.check_embeddings(x, embed_dim, allow_tokens=False)


def _real_rows(valid, mesh: Mesh, *arrays):
    """The rows of `arrays` (each `[n, ...]`) where `valid` `[n]` is True, in their order.

    Training shuffles and batches its rows, so padding rows (such as the copies of example 0
    that :func:`dkvb_jax.parallel.distributed.global_batch` appends) are removed rather than
    weighted: what follows then sees exactly the real rows, as the one-device function would.
    Host data is selected on the host; a multi-host global array by a gather that replicates
    the real rows on every device of `mesh`, after which every process holds all of them.

    Returns:
      The selected arrays `[n_valid, ...]` as host arrays, in a tuple (`arrays` unchanged when
      `valid` is None and they are host data).

    Raises:
      TypeError: `valid` is not boolean.
      ValueError: `valid` is not `[n]`, marks no row, or is None for a multi-host array.
    """
    if valid is None:
        if all(getattr(a, "is_fully_addressable", True) for a in arrays):
            return arrays
        raise ValueError(
            "a multi-host global array needs valid= (the validity from global_batch; all True "
            "if it has no padding rows), so that its rows can be gathered for shuffling."
        )
    n = arrays[0].shape[0]
    if not isinstance(valid, jax.Array):
        valid = np.asarray(valid)
    if valid.dtype != bool:
        raise TypeError(
            f"valid must be a bool array marking the real rows (e.g. from global_batch), got "
            f"dtype {valid.dtype}."
        )
    if tuple(valid.shape) != (n,):
        raise ValueError(f"valid must have shape [n={n}] (one flag per row), got {valid.shape}.")
    arrays = (valid, *arrays)
    if all(getattr(a, "is_fully_addressable", True) for a in arrays):
        keep, *host = (np.asarray(a) for a in arrays)
        count, selected = int(keep.sum()), tuple(a[keep] for a in host)
    else:
        count = int(jax.jit(jnp.sum)(valid))

        @functools.partial(jax.jit, out_shardings=mesh_lib.replicated(mesh))
        def gather(v, *a):
            rows = jnp.nonzero(v, size=count)[0]
            return tuple(b[rows] for b in a)

        selected = tuple(np.asarray(a.addressable_data(0)) for a in gather(*arrays))
    if count == 0:
        raise ValueError("valid marks no row as real: there is nothing to train on.")
    return selected


# ----------------------------------------------------------------------------------------------
# Codes and key usage.


@functools.partial(jax.jit, static_argnames=("model", "mesh", "batch_size"))
def _codes_sharded(model: DKVB, mesh: Mesh, batch_size: int, variables: dict, x: jax.Array):
    def local(v, xl):
        return _batching.batched_apply(
            lambda xb: model.apply(v, xb, method=DKVB.codes), xl, batch_size
        )

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=P(DATA))(variables, x)


def codes(
    model: DKVB, variables: dict, x: np.ndarray | jax.Array, mesh: Mesh, *, batch_size: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """Data-parallel :func:`dkvb_jax.training.compute_codes`.

    Args:
      model: the DKVB module.
      variables: its variables (replicated onto every device of `mesh`).
      x: embeddings `[n, embed_dim]`.
      mesh: device mesh with a ``'data'`` axis.
      batch_size: rows per lookup call on each device.

    Returns:
      indices int32 `[n, codebooks, top_k]` (-1 where invalid) and valid bool, sharded over
      ``'data'`` along the examples.
    """
    _check_embeddings(x, model.config.embed_dim)
    _validation.check_positive_int(batch_size, "batch_size")
    n = x.shape[0]
    xs, _ = mesh_lib.shard_batch(x, mesh)
    indices, valid = _codes_sharded(model, mesh, batch_size, variables, xs)
    if xs.shape[0] == n:
        return indices, valid
    return indices[:n], valid[:n]


@functools.partial(jax.jit, static_argnames=("num_keys", "num_classes", "mesh"))
def _usage_sharded(num_keys, num_classes, mesh, indices, valid, weights, labels):
    def local(i, v, w, lab):
        hist = _usage_from_codes(
            i, v, num_keys, None if num_classes is None else lab, num_classes, w
        )
        # Integer counts: the cross-device sum is exact, so it equals the one-device histogram.
        return jax.lax.psum(hist, DATA)

    return jax.shard_map(local, mesh=mesh, in_specs=P(DATA), out_specs=P())(
        indices, valid, weights, labels
    )


def usage_from_codes(
    indices: jax.Array,
    valid: jax.Array,
    num_keys: int,
    mesh: Mesh,
    labels: jax.Array | None = None,
    num_classes: int | None = None,
    *,
    rows: jax.Array | None = None,
) -> jax.Array:
    """Usage histogram of codes `[n, codebooks, top_k]`, counted per device and `psum`-ed.

    Args:
      indices, valid: codes `[n, codebooks, top_k]` (host arrays, or split over ``'data'``).
      num_keys: keys per codebook.
      mesh: device mesh with a ``'data'`` axis.
      labels: optional int `[n]`; with `num_classes`, counts per class.
      num_classes: number of classes (required with `labels`).
      rows: optional bool `[n]`; rows where it is False (padding) are not counted.

    Returns:
      int32 `[codebooks, keys]`, or `[classes, codebooks, keys]` with labels, replicated.
    """
    if labels is not None and num_classes is None:
        raise ValueError("usage_from_codes: pass num_classes together with labels.")
    idx, w = mesh_lib.shard_batch(indices, mesh, valid=rows)
    val, _ = mesh_lib.shard_batch(valid, mesh)
    if labels is None:
        # Unused placeholder, built from the sharded codes so it also works on global arrays.
        lab = jnp.zeros_like(idx[:, 0, 0])
    else:
        lab, _ = mesh_lib.shard_batch(labels, mesh)
    return _usage_sharded(num_keys, None if labels is None else num_classes, mesh, idx, val, w, lab)


def key_usage(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    mesh: Mesh,
    labels: np.ndarray | jax.Array | None = None,
    *,
    num_classes: int | None = None,
    valid: np.ndarray | jax.Array | None = None,
    batch_size: int = 1024,
) -> jax.Array:
    """Data-parallel :func:`dkvb_jax.training.key_usage`: identical counts on any mesh.

    Args:
      valid: optional bool `[n]` marking real rows (e.g. from
        :func:`dkvb_jax.parallel.distributed.global_batch`); others are not counted.

    Returns:
      int32 `[codebooks, keys]`, or `[classes, codebooks, keys]` when labels are given.
    """
    num_classes = model.config.num_classes if num_classes is None else num_classes
    if labels is not None and getattr(labels, "is_fully_addressable", True):
        _validation.check_labels(labels, num_classes, n=x.shape[0])
    indices, codes_valid = codes(model, variables, x, mesh, batch_size=batch_size)
    return usage_from_codes(
        indices,
        codes_valid,
        model.config.num_keys,
        mesh,
        labels,
        num_classes if labels is not None else None,
        rows=valid,
    )


# ----------------------------------------------------------------------------------------------
# Evaluation.


class EvalResult(NamedTuple):
    """Evaluation of a labelled (or unlabelled) set.

    Attributes:
      logits: float `[n, classes]`, one row per input, none dropped.
      correct: number of correct top-1 predictions (0 without labels).
      count: number of examples `n`.
      accuracy: `correct / count`, or NaN without labels.
    """

    logits: jax.Array
    correct: int
    count: int
    accuracy: float


@functools.partial(jax.jit, static_argnames=("model", "mesh", "per_device"))
def _evaluate_sharded(model: DKVB, mesh: Mesh, per_device: int, variables, x, y, w):
    size = mesh_lib.data_size(mesh)
    steps = x.shape[0] // (size * per_device)
    split = NamedSharding(mesh, P(None, DATA))
    rows = NamedSharding(mesh, P(DATA))

    def to_steps(a):
        # Device d holds rows [d * m / size, (d + 1) * m / size): step through each device's own
        # rows, so no example moves between devices.
        a = a.reshape(size, steps, per_device, *a.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(a, split)

    def body(batch):
        xb, yb, wb = (a.reshape(size * per_device, *a.shape[2:]) for a in batch)
        xb = jax.lax.with_sharding_constraint(xb, rows)
        logits = jax.lax.with_sharding_constraint(model.apply(variables, xb), rows)
        return logits.reshape(size, per_device, -1), jnp.sum((logits.argmax(-1) == yb) & wb)

    logits, correct = jax.lax.map(body, tuple(map(to_steps, (x, y, w))))
    logits = logits.swapaxes(0, 1).reshape(x.shape[0], -1)
    return jax.lax.with_sharding_constraint(logits, rows), correct.sum(), w.sum()


def evaluate(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    mesh: Mesh,
    y: np.ndarray | jax.Array | None = None,
    *,
    valid: np.ndarray | jax.Array | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Logits and accuracy of embeddings `[n, embed_dim]`, data-parallel over `mesh`.

    Each step evaluates up to `batch_size` rows per device; the data is padded to whole steps
    and padding rows (and rows where `valid` is False) are masked out of the accuracy.

    Variables may be replicated or codebook-sharded (:func:`dkvb_jax.parallel.place_variables`
    on a ``data x codebook`` mesh); XLA then partitions the lookup over codebooks too.

    Returns:
      An :class:`EvalResult`; `logits` has one row per input row (padding rows of a multi-host
      global array included, to be masked with `valid`).
    """
    cfg = model.config
    _check_embeddings(x, cfg.embed_dim)
    _validation.check_positive_int(batch_size, "batch_size")
    n = x.shape[0]
    if y is not None and getattr(y, "is_fully_addressable", True):
        _validation.check_labels(y, cfg.num_classes, n=n)
    size = mesh_lib.data_size(mesh)
    host = getattr(x, "is_fully_addressable", True)
    # Host data is padded to whole steps of `batch_size` rows per device; a global array
    # keeps its layout and is stepped in the largest per-device batch dividing its share.
    xs, w = mesh_lib.shard_batch(x, mesh, multiple=size * batch_size if host else None, valid=valid)
    labels = np.zeros((n,), np.int32) if y is None else y
    ys, _ = mesh_lib.shard_batch(labels, mesh, multiple=size * batch_size if host else None)
    share = xs.shape[0] // size
    per_device = max(d for d in range(1, min(batch_size, share) + 1) if share % d == 0)
    # One step is one lookup chunk: the core's row chunking (`lax.map` over the rows) would run
    # over the sharded batch axis and make XLA gather the whole step onto every device. So the
    # step is capped at the lookup memory budget (per device, after codebook sharding) and the
    # lookup itself runs unchunked.
    if cfg.lookup_chunk is None:
        cap = auto_chunk(
            cfg.num_codebooks // mesh_lib.codebook_size(mesh), cfg.num_keys, cfg.lookup_memory_mb
        )
    else:
        cap = cfg.lookup_chunk or per_device
    per_device = max(d for d in range(1, min(per_device, cap) + 1) if share % d == 0)
    unchunked = DKVB(cfg.replace(lookup_chunk=0))
    logits, correct, count = _evaluate_sharded(unchunked, mesh, per_device, variables, xs, ys, w)
    if host and xs.shape[0] != n:
        logits = logits[:n]
    correct = int(correct) if y is not None else 0
    count = int(count)
    return EvalResult(
        logits=logits,
        correct=correct,
        count=count,
        accuracy=correct / count if y is not None and count else float("nan"),
    )


# ----------------------------------------------------------------------------------------------
# Key initialisation: EMA k-means statistics.


@functools.partial(jax.jit, static_argnames=("mesh",))
def _ema_stats_sharded(mesh, queries, weights, keys):
    def local(q, w, k):
        counts, sums, sq_err = keys_lib._batch_stats(q, w, k)
        return jax.lax.psum((counts, sums, sq_err), DATA)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(DATA), P()), out_specs=P())(
        queries, weights, keys
    )


def ema_batch_stats(
    queries: jax.Array, weights: jax.Array, keys: jax.Array, mesh: Mesh
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One batch's k-means statistics, computed per device and summed over ``'data'``.

    Args:
      queries: `[batch, codebooks, key_dim]`.
      weights: `[batch]` example weights (0 for padding).
      keys: `[codebooks, keys, key_dim]`.

    Returns:
      counts `[codebooks, keys]`, sums `[codebooks, keys, key_dim]` and the weighted squared
      quantisation error (scalar), all replicated.
    """
    q, valid = mesh_lib.shard_batch(queries, mesh)
    w, _ = mesh_lib.shard_batch(weights, mesh)
    w = jnp.where(valid, w, 0).astype(q.dtype)
    return _ema_stats_sharded(mesh, q, w, keys)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _ema_step_sharded(mesh, state, queries, weights, rng, decay, epsilon, dead_threshold):
    counts, sums, sq_err = _ema_stats_sharded(mesh, queries, weights, state.keys)
    # The update runs on replicated, psum-ed statistics, outside the sharded lookup.
    state = keys_lib.ema_update(
        state, counts, sums, queries, weights, rng, decay, epsilon, dead_threshold
    )
    return state, sq_err, counts


def ema_step(
    state: keys_lib.EMAState,
    queries: jax.Array,
    weights: jax.Array,
    rng: jax.Array,
    mesh: Mesh,
    *,
    decay: float = 0.95,
    epsilon: float = 1e-5,
    dead_threshold: float = 1e-3,
) -> tuple[keys_lib.EMAState, jax.Array, jax.Array]:
    """The core's EMA k-means step on a batch split over ``'data'``.

    Each device assigns its own rows to keys; counts and sums are `psum`-ed over the data axis;
    the update and the dead-key re-seeding (drawn from the global batch) then run on the
    replicated statistics, so the result matches the one-device step up to float summation
    order.

    Returns:
      The new state, the batch's weighted squared quantisation error and its counts
      `[codebooks, keys]`.
    """
    q, valid = mesh_lib.shard_batch(queries, mesh)
    w, _ = mesh_lib.shard_batch(weights, mesh)
    w = jnp.where(valid, w, 0).astype(q.dtype)
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    return _ema_step_sharded(mesh, state, q, w, rng, decay, epsilon, dead_threshold)


# ----------------------------------------------------------------------------------------------
# Value training.


def _global_mean_grads(model, use_codes, smoothing, mesh, variables, params, inputs, y, w):
    """Loss, gradient and correct count of one global batch split over ``'data'``.

    Each device differentiates the *sum* of its weighted losses; summing those gradients and
    dividing by the global weight gives exactly the gradient of the global mean loss, whatever
    the split (padding rows have weight 0).
    """
    forward = values_lib._forward(model, use_codes)

    def local(variables, params, inputs, y, w):
        def loss_sum(p):
            logits = forward({**variables, "params": p}, inputs)
            losses = smoothed_cross_entropy(logits, y, smoothing)
            return jnp.sum(losses * w.astype(losses.dtype)), logits

        # Differentiate w.r.t. a per-device copy: the gradient of a replicated input would be
        # summed over devices implicitly; marking it varying keeps the one psum below explicit.
        local_params = jax.lax.pcast(params, DATA, to="varying")
        (total_loss, logits), grads = jax.value_and_grad(loss_sum, has_aux=True)(local_params)
        total_w = jnp.maximum(jax.lax.psum(w.sum().astype(jnp.float32), DATA), 1.0)
        grads = jax.tree.map(lambda g: jax.lax.psum(g, DATA) / total_w, grads)
        loss = jax.lax.psum(total_loss, DATA) / total_w
        correct = jax.lax.psum(jnp.sum((logits.argmax(-1) == y) & w), DATA)
        return loss, grads, correct

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P(DATA), P(DATA), P(DATA)), out_specs=P()
    )(variables, params, inputs, y, w)


@functools.partial(
    jax.jit, static_argnames=("model", "use_codes", "tx", "batch_size", "smoothing", "mesh")
)
def train_epoch(
    model, use_codes, tx, batch_size, smoothing, mesh, variables, opt_state, inputs, y, rng
):
    """One epoch of value training with each minibatch split over ``'data'``.

    Same shuffling, padding and update order as the core's one-device epoch, so the same `rng`
    gives the same parameters up to float summation order. `batch_size` must be divisible by the
    data-axis size.

    Returns:
      `(params, opt_state, mean loss, accuracy)` over the epoch.
    """
    n = y.shape[0]
    perm = jax.random.permutation(rng, n)
    split = NamedSharding(mesh, P(None, DATA))
    batched = [
        jax.lax.with_sharding_constraint(_batching.pad_to_batches(a[perm], batch_size)[0], split)
        for a in (*inputs, y)
    ]
    weights = _batching.pad_to_batches(jnp.ones((n,)), batch_size)[1]
    weights = jax.lax.with_sharding_constraint(weights, split)
    frozen_vars = {k: v for k, v in variables.items() if k != "params"}

    def step(carry, batch):
        params, opt_state = carry
        *xb, yb, wb = batch
        loss, grads, correct = _global_mean_grads(
            model, use_codes, smoothing, mesh, frozen_vars, params, tuple(xb), yb, wb
        )
        params, opt_state = values_lib.optimizer_step(tx, grads, opt_state, params, frozen_vars)
        return (params, opt_state), (loss * wb.sum(), correct)

    (params, opt_state), (losses, correct) = jax.lax.scan(
        step, (variables["params"], opt_state), (*batched, weights)
    )
    return params, opt_state, losses.sum() / n, correct.sum() / n


def train_values(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    mesh: Mesh,
    *,
    key: jax.Array,
    config: ValueTrainConfig | None = None,
    valid: np.ndarray | jax.Array | None = None,
    progress: bool = True,
) -> tuple[dict, TrainHistory]:
    """Data-parallel :func:`dkvb_jax.training.train_values` (gradients averaged over devices).

    Args:
      model, variables, key, config, progress: as for the one-device function.
      x: embeddings `[n, embed_dim]` (host arrays, or global arrays split over ``'data'``).
      y: int labels `[n]`.
      mesh: device mesh with a ``'data'`` axis.
      valid: optional bool `[n]` marking real rows; pass the one from
        :func:`dkvb_jax.parallel.distributed.global_batch`, whose padding rows would otherwise
        be trained on as extra copies of example 0. Training then runs on exactly the real
        rows and equals the one-device result on them up to float summation order.

    Returns:
      New variables (only ``params`` changed, replicated) and the per-epoch history (without
      eval accuracy; use :func:`evaluate`).
    """
    config = ValueTrainConfig() if config is None else config
    cfg = model.config
    _check_embeddings(x, cfg.embed_dim)
    x, y = _real_rows(valid, mesh, x, y)
    _validation.check_labels(y, cfg.num_classes, n=x.shape[0])
    n = x.shape[0]
    batch_size = min(config.batch_size, n)
    size = mesh_lib.data_size(mesh)
    if batch_size % size:
        raise ValueError(
            f"batch size {batch_size} (ValueTrainConfig.batch_size={config.batch_size}, n={n}) "
            f"must be divisible by the {size} devices of the 'data' axis so every device gets an "
            "equal share of each step; pick a multiple of the data-axis size."
        )
    variables = jax.device_put(variables, mesh_lib.replicated(mesh))
    use_codes = cfg.splitter != "learned"
    inputs = codes(model, variables, x, mesh) if use_codes else (jnp.asarray(x),)
    tx = config.optimizer_for(steps_per_epoch=-(-n // batch_size))
    opt_state = tx.init(variables["params"])
    y = jnp.asarray(y, jnp.int32)
    history = TrainHistory([], [], [])
    for epoch_key in progress_bar(
        jax.random.split(key, config.epochs), desc="value training (data-parallel)",
        disable=not progress,
    ):  # fmt: skip
        params, opt_state, loss, acc = train_epoch(
            model, use_codes, tx, batch_size, config.label_smoothing, mesh,
            variables, opt_state, inputs, y, epoch_key,
        )  # fmt: skip
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"value training diverged (loss {loss}) at epoch {len(history.loss) + 1}; lower "
                f"ValueTrainConfig.learning_rate (now {config.learning_rate})."
            )
        variables = {**variables, "params": params}
        history.loss.append(loss)
        history.accuracy.append(float(acc))
    return variables, history


# ----------------------------------------------------------------------------------------------
# Key initialisation: the whole EMA k-means pass.


@functools.partial(jax.jit, static_argnames=("model",))
def _queries(model: DKVB, variables: dict, x: jax.Array) -> jax.Array:
    return model.apply(variables, x, method=DKVB.queries)


def fit_keys(
    model: DKVB,
    variables: dict,
    data: keys_lib.Batches,
    mesh: Mesh,
    *,
    key: jax.Array,
    config: keys_lib.KeyInitConfig | None = None,
    valid: np.ndarray | jax.Array | None = None,
    progress: bool = True,
) -> tuple[dict, keys_lib.KeyInitReport]:
    """Data-parallel :func:`dkvb_jax.training.fit_keys`: every batch is split over ``'data'``.

    Same shuffling, seeding and EMA updates as the core, with each batch's queries computed
    on its own device shard and the k-means counts and sums all-reduced over the data axis.
    When every batch has a multiple of the data-axis size rows, the keys equal the one-device
    keys up to float summation order; otherwise batches are padded with zero-weight rows, which
    leaves the statistics unchanged but draws dead-key re-seeds from a longer index range.

    Args:
      model, variables, key, config, progress: as for the one-device function.
      data: embeddings `[n, embed_dim]`, a sequence of batches or a callable returning a fresh
        iterable of batches for each epoch.
      mesh: device mesh with a ``'data'`` axis.
      valid: optional bool `[n]` marking the real rows of an array `data`; pass the one from
        :func:`dkvb_jax.parallel.distributed.global_batch`, whose padding rows would otherwise
        pull the keys towards example 0. The keys are then fitted on exactly the real rows.

    Returns:
      New variables with fitted keys (replicated) and the per-epoch report.
    """
    config = keys_lib.KeyInitConfig() if config is None else config
    cfg = model.config
    if isinstance(data, np.ndarray | jax.Array):
        if valid is not None:
            _check_embeddings(data, cfg.embed_dim)
        (data,) = _real_rows(valid, mesh, data)
    elif valid is not None:
        raise TypeError(
            "fit_keys: valid marks the rows of an array `data` [n, embed_dim]; with a "
            f"sequence or callable of batches ({type(data).__name__}), yield real rows only."
        )
    key_seed, key_loop = jax.random.split(key)
    # The same host-side shuffling stream as the core, so both visit batches in the same order.
    shuffle_rng = np.random.default_rng(np.asarray(jax.random.key_data(key_loop)).ravel())
    variables = jax.device_put(variables, mesh_lib.replicated(mesh))

    def batches():
        n_seen = 0
        for b in keys_lib._epoch_batches(data, config.batch_size, shuffle_rng):
            b = np.asarray(b)
            _validation.check_embeddings(
                b, cfg.embed_dim, name="key-init batch", allow_tokens=False
            )
            n_seen += len(b)
            xs, valid = mesh_lib.shard_batch(b, mesh)
            yield _queries(model, variables, xs), valid, len(b)
        if n_seen == 0:
            raise ValueError(
                "fit_keys got an empty dataset: pass at least one batch of embeddings."
            )

    keys = variables["frozen"]["keys"]
    if config.seeding != "random":
        first, valid, n = next(iter(batches()))
        first = first[:n]
        if config.seeding == "sample":
            pick = jax.random.choice(key_seed, first.shape[0], (cfg.num_keys,), replace=True)
            keys = jnp.swapaxes(first[pick], 0, 1)
        else:
            keys = keys_lib._kmeans_plus_plus(key_seed, first, cfg.num_keys)
    counts = jnp.ones(keys.shape[:2], jnp.float32)
    state = keys_lib.EMAState(keys=keys, sums=keys * counts[..., None], counts=counts)
    state = jax.device_put(state, mesh_lib.replicated(mesh))

    report = keys_lib.KeyInitReport([], [])
    rng = key_loop
    epochs = progress_bar(
        range(config.epochs), desc="key init (data-parallel)", disable=not progress
    )
    for _ in epochs:
        err, n, used = 0.0, 0, jnp.zeros(keys.shape[:2], bool)
        for q, valid, rows in batches():
            rng, sub = jax.random.split(rng)
            w = valid.astype(q.dtype)
            state, sq, batch_counts = _ema_step_sharded(
                mesh, state, q, w, sub, config.decay, config.epsilon, config.dead_threshold
            )
            err += float(sq)
            n += rows
            used = used | (batch_counts > 0)
        report.quantisation_error.append(err / (n * cfg.num_codebooks))
        report.dead_fraction.append(float(1.0 - used.mean()))
    frozen = {**variables["frozen"], "keys": state.keys}
    return {**variables, "frozen": frozen}, report
