"""Key initialisation without labels: EMA k-means over the codebook queries.

After this phase the keys are frozen. The EMA state (running sums and Laplace-smoothed counts)
is kept consistent with the keys at every re-seed: a re-seeded key gets a running sum equal to
`key * count`, so the next EMA step starts from the new key instead of dragging it to zero (a
pitfall of public implementations).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dkvb_jax import _validation
from dkvb_jax._progress import progress_bar
from dkvb_jax.errors import InputTypeError
from dkvb_jax.model import DKVB
from dkvb_jax.model.lookup import nearest_keys
from dkvb_jax.parallel.mesh import DATA
from dkvb_jax.training import _rows

Batches = np.ndarray | Sequence[np.ndarray] | Callable[[], Iterable[np.ndarray]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyInitConfig:
    """EMA k-means settings (paper: decay 0.95, about 10 epochs).

    Attributes:
      epochs: Passes over the unlabelled data.
      batch_size: Rows per step when the data is given as one array.
      decay: EMA decay of the running sums and counts.
      epsilon: Laplace smoothing of the cluster counts.
      seeding: ``random`` (normal keys, the paper), ``sample`` (random inputs of the first
        batch) or ``kmeans++`` (D^2 sampling over the first batch, per codebook).
      dead_threshold: A key whose smoothed EMA count falls below this is dead and re-seeded
        from a random input of the current batch; 0 disables re-seeding.
    """

    epochs: int = 10
    batch_size: int = 256
    decay: float = 0.95
    epsilon: float = 1e-5
    seeding: Literal["random", "sample", "kmeans++"] = "sample"
    dead_threshold: float = 1e-3

    def __post_init__(self):
        _validation.check_positive_int(self.epochs, "KeyInitConfig.epochs")
        _validation.check_positive_int(self.batch_size, "KeyInitConfig.batch_size")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"KeyInitConfig.decay must be in [0, 1), got {self.decay}.")
        if self.seeding not in ("random", "sample", "kmeans++"):
            raise ValueError(
                f"KeyInitConfig.seeding must be 'random', 'sample' or 'kmeans++', got "
                f"{self.seeding!r}."
            )
        if self.dead_threshold < 0:
            raise ValueError(
                f"KeyInitConfig.dead_threshold must be >= 0, got {self.dead_threshold}."
            )


class EMAState(NamedTuple):
    """Running k-means statistics per codebook."""

    keys: jax.Array  # [codebooks, keys, key_dim]
    sums: jax.Array  # [codebooks, keys, key_dim]
    counts: jax.Array  # [codebooks, keys]


class KeyInitReport(NamedTuple):
    """Per-epoch quality of the keys.

    Attributes:
      quantisation_error: Mean squared distance of each query to its nearest key, `[epochs]`.
      dead_fraction: Fraction of keys no input of the epoch was assigned to, `[epochs]`.
    """

    quantisation_error: list[float]
    dead_fraction: list[float]


def _assign(queries: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    res = nearest_keys(queries, keys, top_k=1, chunk=None)
    return res.indices[..., 0], res.distances[..., 0]


def _local_stats(queries, weights, keys):
    idx, dist = _assign(queries, keys)  # [batch, codebooks]
    num_codebooks, num_keys, key_dim = keys.shape
    # Scatter-adds, not a one-hot [batch, codebooks, keys] tensor (1 GiB at the paper setting).
    cb = jnp.arange(num_codebooks)[None, :]
    counts = jnp.zeros((num_codebooks, num_keys), queries.dtype).at[cb, idx].add(weights[:, None])
    sums = jnp.zeros((num_codebooks, num_keys, key_dim), queries.dtype)
    sums = sums.at[cb, idx].add(queries * weights[:, None, None])
    return counts, sums, (dist * weights[:, None]).sum()


@functools.partial(jax.jit, static_argnames=("mesh",))
def _batch_stats(queries, weights, keys, mesh: Mesh | None = None):
    """One batch's k-means statistics (jittable).

    Args:
      queries: `[batch, codebooks, key_dim]`.
      weights: `[batch]` example weights (0 for padding).
      keys: `[codebooks, keys, key_dim]`.
      mesh: assign each device's share of the rows of the ``'data'`` axis and sum the
        statistics over it; None computes them on one device.

    Returns:
      counts `[codebooks, keys]`, sums `[codebooks, keys, key_dim]` and the weighted squared
      quantisation error (scalar), replicated on a mesh.
    """
    if mesh is None:
        return _local_stats(queries, weights, keys)
    queries, weights = _rows.pad_to_mesh(mesh, queries, weights)  # padding rows weigh 0

    def local(q, w, k):
        return jax.lax.psum(_local_stats(q, w, k), DATA)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(DATA), P()), out_specs=P())(
        queries, weights, keys
    )


def ema_update(
    state: EMAState,
    counts: jax.Array,
    sums: jax.Array,
    queries: jax.Array,
    weights: jax.Array,
    rng: jax.Array,
    decay: float,
    epsilon: float,
    dead_threshold: float,
) -> EMAState:
    """The EMA k-means update from one batch's statistics (pure).

    Args:
      state: running statistics.
      counts: the batch's assignment counts `[codebooks, keys]` (summed over devices, if any).
      sums: the batch's summed queries per key `[codebooks, keys, key_dim]`.
      queries: the batch's queries `[batch, codebooks, key_dim]`, source of re-seeded keys.
      weights: `[batch]` example weights (0 for padding rows, never picked as seeds).
      rng: PRNG key for re-seeding.
      decay, epsilon, dead_threshold: see :class:`KeyInitConfig`.
    """
    new_counts = decay * state.counts + (1.0 - decay) * counts
    new_sums = decay * state.sums + (1.0 - decay) * sums
    total = new_counts.sum(axis=-1, keepdims=True)
    num_codebooks, num_keys = new_counts.shape
    smoothed = (new_counts + epsilon) / (total + num_keys * epsilon) * total
    keys = new_sums / smoothed[..., None]

    # Re-seed dead keys from random (valid) inputs of this batch, and reset their running
    # statistics to match: sums = key * count, so keys == sums / counts still holds.
    dead = smoothed < dead_threshold
    p = weights / weights.sum()
    pick = jax.random.choice(rng, queries.shape[0], shape=(num_codebooks, num_keys), p=p)
    seeds = queries[pick, jnp.arange(num_codebooks)[:, None]]  # [codebooks, keys, key_dim]
    reset_count = jnp.maximum(total / num_keys, epsilon)  # [codebooks, 1]
    keys = jnp.where(dead[..., None], seeds, keys)
    smoothed = jnp.where(dead, reset_count, smoothed)
    new_sums = jnp.where(dead[..., None], seeds * reset_count[..., None], new_sums)
    return EMAState(keys, new_sums, smoothed)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _ema_step(state: EMAState, queries, weights, rng, decay, epsilon, dead_threshold, mesh=None):
    """One EMA k-means step; on a mesh only the statistics are split over ``'data'``.

    The update and the dead-key re-seeding (drawn from the whole batch) run on the summed,
    replicated statistics, so a mesh changes the result only by float summation order.
    """
    counts, sums, sq_err = _batch_stats(queries, weights, state.keys, mesh)
    state = ema_update(state, counts, sums, queries, weights, rng, decay, epsilon, dead_threshold)
    return state, sq_err, counts


def _kmeans_plus_plus(rng: jax.Array, queries: jax.Array, num_keys: int) -> jax.Array:
    """D^2 seeding per codebook. queries `[n, codebooks, key_dim]` -> keys `[codebooks, keys, key_dim]`."""
    n, num_codebooks, _ = queries.shape
    q = jnp.swapaxes(queries, 0, 1)  # [codebooks, n, key_dim]

    def seed_one(rng, pts):
        rng, sub = jax.random.split(rng)
        first = pts[jax.random.randint(sub, (), 0, n)]
        d2 = jnp.sum((pts - first) ** 2, axis=-1)
        chosen = jnp.zeros((num_keys, pts.shape[-1]), pts.dtype).at[0].set(first)

        def body(i, carry):
            chosen, d2, rng = carry
            rng, sub = jax.random.split(rng)
            logits = jnp.log(jnp.maximum(d2, 1e-30))
            j = jax.random.categorical(sub, logits)
            c = pts[j]
            return chosen.at[i].set(c), jnp.minimum(d2, jnp.sum((pts - c) ** 2, -1)), rng

        chosen, _, _ = jax.lax.fori_loop(1, num_keys, body, (chosen, d2, rng))
        return chosen

    return jax.jit(jax.vmap(seed_one))(jax.random.split(rng, num_codebooks), q)


def _epoch_batches(data: Batches, batch_size: int, rng: np.random.Generator) -> Iterable[Any]:
    if callable(data):
        yield from data()
    elif isinstance(data, np.ndarray | jax.Array):
        # One host copy per epoch, not one per batch (a jax.Array would be copied every time).
        data = np.asarray(data)
        order = rng.permutation(len(data))
        for start in range(0, len(data), batch_size):
            yield data[order[start : start + batch_size]]
    else:
        yield from data


@functools.partial(jax.jit, static_argnames=("model",))
def _queries(model: DKVB, variables: dict, x: jax.Array) -> jax.Array:
    return model.apply(variables, x, method=DKVB.queries)


def _array_rows(data: Batches, valid, mesh: Mesh | None, embed_dim: int) -> Batches:
    """`data`'s real rows when it is one array (see :func:`_rows.real_rows`); else `data`."""
    if isinstance(data, np.ndarray | jax.Array):
        if valid is not None or not _rows.is_host_readable(data):
            _rows.check_embeddings(data, embed_dim, mesh)
        return _rows.real_rows(valid, mesh, data)[0]
    if valid is not None:
        raise InputTypeError(
            "fit_keys: valid marks the rows of an array `data` [n, embed_dim]; with a "
            f"sequence or callable of batches ({type(data).__name__}), yield real rows only."
        )
    return data


def fit_keys(
    model: DKVB,
    variables: dict,
    data: Batches,
    *,
    key: jax.Array,
    config: KeyInitConfig = KeyInitConfig(),
    progress: bool = True,
    mesh: Mesh | None = None,
    valid: np.ndarray | jax.Array | None = None,
) -> tuple[dict, KeyInitReport]:
    """Fits the keys of every codebook by EMA k-means on unlabelled embeddings.

    On a mesh each batch's queries are computed on its device shards and the k-means counts
    and sums are summed over the ``'data'`` axis; shuffling, seeding, updates and re-seeding
    are those of one device, so the keys equal the one-device keys up to float summation order.

    Args:
      model: The DKVB module.
      variables: Its variables; only ``frozen/keys`` changes.
      data: Embeddings `[n, embed_dim]` (host arrays, or global arrays split over ``'data'``),
        a sequence of batches, or a callable returning a fresh iterable of batches
        `[b, embed_dim]` for each epoch.
      key: PRNG key (seeding, re-seeding, shuffling).
      config: k-means settings.
      progress: Show a progress bar over epochs.
      mesh: split every batch over this mesh's ``'data'`` axis; None runs on one device.
      valid: optional bool `[n]` marking the real rows of an array `data`; pass the one from
        :func:`dkvb_jax.parallel.distributed.global_batch`, whose padding rows would otherwise
        pull the keys towards example 0. The keys are then fitted on exactly the real rows.

    Returns:
      New variables with fitted keys (replicated on a mesh), and a per-epoch
      :class:`KeyInitReport`.
    """
    cfg = model.config
    data = _array_rows(data, valid, mesh, cfg.embed_dim)
    key_seed, key_loop = jax.random.split(key)
    shuffle_rng = np.random.default_rng(np.asarray(jax.random.key_data(key_loop)).ravel())
    variables = _rows.replicate(variables, mesh)

    def batches():
        n_seen = 0
        for b in _epoch_batches(data, config.batch_size, shuffle_rng):
            b = np.asarray(b)
            _validation.check_embeddings(
                b, cfg.embed_dim, name="key-init batch", allow_tokens=False
            )
            n_seen += len(b)
            # Queries of the padded, split batch, cut back to its real rows.
            q = _queries(model, variables, _rows.place(b, mesh))
            yield q if q.shape[0] == len(b) else q[: len(b)]
        if n_seen == 0:
            raise ValueError(
                "fit_keys got an empty dataset: pass at least one batch of embeddings."
            )

    keys = variables["frozen"]["keys"]
    if config.seeding != "random":
        first = next(iter(batches()))
        if config.seeding == "sample":
            pick = jax.random.choice(key_seed, first.shape[0], (cfg.num_keys,), replace=True)
            keys = jnp.swapaxes(first[pick], 0, 1)
        else:
            keys = _kmeans_plus_plus(key_seed, first, cfg.num_keys)
    # Start from "every key holds one average share" so early steps do not divide by ~0.
    counts = jnp.ones(keys.shape[:2], jnp.float32)
    state = _rows.replicate(EMAState(keys=keys, sums=keys * counts[..., None], counts=counts), mesh)

    report = KeyInitReport([], [])
    rng = key_loop
    epochs = progress_bar(range(config.epochs), desc="key init (EMA k-means)", disable=not progress)
    for _ in epochs:
        err, n, used = 0.0, 0, jnp.zeros(keys.shape[:2], bool)
        for q in batches():
            rng, sub = jax.random.split(rng)
            w = jnp.ones((q.shape[0],), q.dtype)
            state, sq, batch_counts = _ema_step(
                state, q, w, sub, config.decay, config.epsilon, config.dead_threshold, mesh
            )
            err += float(sq)
            n += q.shape[0]
            used = used | (batch_counts > 0)
        report.quantisation_error.append(err / (n * cfg.num_codebooks))
        report.dead_fraction.append(float(1.0 - used.mean()))

    frozen = {**variables["frozen"], "keys": state.keys}
    return {**variables, "frozen": frozen}, report


def quantisation_error(
    model: DKVB, variables: dict, x: np.ndarray, batch_size: int = 1024
) -> float:
    """Mean squared distance from each query `[n, codebooks, key_dim]` to its nearest active key."""
    _validation.check_embeddings(x, model.config.embed_dim, allow_tokens=False)

    @jax.jit
    def err(v, xb):
        res = model.apply(v, xb, method=DKVB.lookup)
        return jnp.sum(jnp.where(res.valid[..., 0], res.distances[..., 0], 0.0))

    total = sum(
        float(err(variables, jnp.asarray(x[i : i + batch_size])))
        for i in range(0, len(x), batch_size)
    )
    return total / (len(x) * model.config.num_codebooks)
