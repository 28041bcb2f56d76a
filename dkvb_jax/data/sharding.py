"""Deterministic shuffling, per-host sharding and batching of example indices.

The plan is pure NumPy and depends only on ``(num_examples, batch_size, seed, epoch,
process_index, process_count)``, so every host computes the same global order without talking
to the others and then keeps its own disjoint slice.

Two ways to end an epoch:

* ``drop_remainder=True`` (training): every host yields ``(num_examples // process_count) //
    batch_size`` full batches. Some examples are skipped this epoch (a different set each epoch when
    shuffling); all hosts take the same number of steps, which multi-host ``jit`` requires.
* ``drop_remainder=False`` (evaluation, encoding): every example of the split is yielded exactly
    once across all hosts. The last batch of each host is padded to ``batch_size`` with rows whose
    ``valid`` flag is False (index ``-1``), and hosts with fewer examples get extra all-padding
    batches, so shapes stay static and all hosts still take the same number of steps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_INDEX = -1


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which example indices one host reads, batch by batch.

    Attributes:
        indices: int64 ``[num_batches, batch_size]``; ``PAD_INDEX`` (-1) where ``valid`` is False.
        valid: bool ``[num_batches, batch_size]``; False marks padding rows.
    """

    indices: np.ndarray
    valid: np.ndarray

    @property
    def num_batches(self) -> int:
        return int(self.indices.shape[0])


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """Fills in ``jax.process_index()`` / ``jax.process_count()`` where None, and validates."""
    if process_index is None or process_count is None:
        import jax  # Imported lazily: the data package must not initialise a backend on import.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(process_count, (int, np.integer)) or process_count < 1:
        raise ValueError(f"process_count must be a positive int, got {process_count!r}.")
    if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be an int in [0, process_count={process_count}), got {process_index!r}."
        )
    return int(process_index), int(process_count)


def global_order(num_examples: int, *, shuffle: bool, seed: int, epoch: int = 0) -> np.ndarray:
    """The order of all examples for one epoch, identical on every host.

    Returns:
        int64 ``[num_examples]``, a permutation of ``arange(num_examples)`` (the identity when
        ``shuffle`` is False). Each ``(seed, epoch)`` pair gives its own permutation.
    """
    if not shuffle:
        return np.arange(num_examples, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.permutation(num_examples).astype(np.int64)


def batch_plan(
    num_examples: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchPlan:
    """Plans one epoch of batches for one host (see the module docstring for the two modes).

    Hosts get contiguous slices of the global order (``np.array_split``), so without shuffling each
    host reads a contiguous range of the split, which is kind to zip archives and record files.

    Args:
        num_examples: size of the whole split.
        batch_size: per-host batch size.
        shuffle: permute the split with ``(seed, epoch)`` before slicing it among hosts.
        seed: shuffling seed; the same on every host.
        epoch: epoch number, so each epoch gets a fresh permutation.
        drop_remainder: True drops the ragged tail; False pads it and marks padding invalid.
        process_index: this host, default ``jax.process_index()``.
        process_count: number of hosts, default ``jax.process_count()``.

    Returns:
        The host's ``BatchPlan``.
    """
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    process_index, process_count = resolve_process(process_index, process_count)
    order = global_order(num_examples, shuffle=shuffle, seed=seed, epoch=epoch)
    mine = np.array_split(order, process_count)[process_index]
    if drop_remainder:
        # The smallest host slice sets the step count so that all hosts agree on it.
        num_batches = (num_examples // process_count) // batch_size
        idx = mine[: num_batches * batch_size].reshape(num_batches, batch_size)
        return BatchPlan(indices=idx, valid=np.ones(idx.shape, dtype=bool))
    largest = -(-num_examples // process_count)
    num_batches = -(-largest // batch_size)
    flat = np.full(num_batches * batch_size, PAD_INDEX, dtype=np.int64)
    flat[: mine.size] = mine
    idx = flat.reshape(num_batches, batch_size)
    return BatchPlan(indices=idx, valid=idx != PAD_INDEX)
