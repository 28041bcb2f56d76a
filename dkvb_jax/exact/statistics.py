"""Per-pair label statistics: the sufficient state for exact unlearning with frozen keys.

With frozen keys an example influences the model only through the pairs it retrieves (its codes,
`[codebooks, top_k]`). Counting, per pair, how many examples of each class retrieved it gives a
table `counts[codebooks, keys, classes]` from which values are derived in closed form. Counts are
int32, so adding and subtracting examples is exact and order-independent: removing a set S from
the counts of D gives, bit for bit, the counts of D \\ S, and values derived from them by a
deterministic function are bit-identical too.

The per-example code store keeps each example's codes, label and id, so that named examples can
be removed later without an encoder pass. Everything here is pure and jittable except the
id bookkeeping, which runs on the host in :mod:`dkvb_jax.exact.api`.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _fingerprint
from dkvb_jax.provenance import Provenance


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatsConfig:
    """How examples are counted.

    Attributes:
      rank_weights: Integer weight of the r-th retrieved key (`top_k` entries, rank 0 first), or
        ``None`` for weight 1 at every rank. Integers keep the counts exact; e.g. ``(2, 1)``
        counts the nearest key twice as much as the second.
    """

    rank_weights: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.rank_weights is not None:
            w = self.rank_weights
            if not isinstance(w, tuple) or not w:
                raise ValueError(
                    f"StatsConfig.rank_weights must be a non-empty tuple of ints or None, got {w!r}."
                )
            for r in w:
                if isinstance(r, bool) or not isinstance(r, int) or r < 0:
                    raise ValueError(
                        f"StatsConfig.rank_weights must hold non-negative ints (exact counts), got "
                        f"{w!r}."
                    )

    def weights_for(self, top_k: int) -> jax.Array:
        """int32 `[top_k]` rank weights."""
        if self.rank_weights is None:
            return jnp.ones((top_k,), jnp.int32)
        if len(self.rank_weights) != top_k:
            raise ValueError(
                f"StatsConfig.rank_weights has {len(self.rank_weights)} entries but the model "
                f"retrieves top_k={top_k} keys per codebook; give one weight per rank."
            )
        return jnp.asarray(self.rank_weights, jnp.int32)


@flax.struct.dataclass
class LabelStats:
    """Label statistics of the examples a model's values were fitted on.

    Attributes:
      counts: int32 `[codebooks, keys, classes]`, rank-weighted number of examples of each class
        that retrieved each pair.
      codes: int32 `[examples, codebooks, top_k]`, each counted example's codes (-1 invalid).
      labels: int32 `[examples]`.
      ids: int32 `[examples]`, unique example ids (rows in the order examples were added).
      rank_weights: int32 `[top_k]`, the weights the counts were accumulated with.
      provenance: what the model's parts were fitted on (static), with the values recorded as
        derived from these counts; None when unknown, and then no removal is certified.
      fingerprint: hash of the keys, projection and search mask the codes were computed under
        (static); codes are stale if they change.
    """

    counts: jax.Array
    codes: jax.Array
    labels: jax.Array
    ids: jax.Array
    rank_weights: jax.Array
    provenance: Provenance | None = flax.struct.field(pytree_node=False, default=None)
    fingerprint: str = flax.struct.field(pytree_node=False, default="")

    @property
    def num_examples(self) -> int:
        return self.ids.shape[0]

    @property
    def num_classes(self) -> int:
        return self.counts.shape[-1]


def counts_from_codes(
    indices: jax.Array,
    labels: jax.Array,
    num_keys: int,
    num_classes: int,
    rank_weights: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Rank-weighted per-class counts of codes; pure, jittable and vmappable.

    Args:
      indices: int `[n, codebooks, top_k]`; negative entries (invalid codes) count nothing.
      labels: int `[n]`.
      num_keys: keys per codebook.
      num_classes: number of classes.
      rank_weights: int32 `[top_k]`.
      weights: optional int `[n]` per-example multiplicity (0 to skip a row, -1 to subtract).

    Returns:
      int32 `[codebooks, keys, classes]`.
    """
    n, num_codebooks, top_k = indices.shape
    valid = indices >= 0
    w = jnp.where(valid, rank_weights.astype(jnp.int32)[None, None, :], 0)
    if weights is not None:
        w = w * weights.astype(jnp.int32)[:, None, None]
    safe = jnp.where(valid, indices, 0)
    cb = jnp.broadcast_to(jnp.arange(num_codebooks)[None, :, None], safe.shape)
    lab = jnp.broadcast_to(labels.astype(jnp.int32)[:, None, None], safe.shape)
    # Integer scatter-add: the result does not depend on the order of the updates.
    return jnp.zeros((num_codebooks, num_keys, num_classes), jnp.int32).at[cb, safe, lab].add(w)


def subtract_rows(
    stats_counts: jax.Array,
    codes: jax.Array,
    labels: jax.Array,
    rank_weights: jax.Array,
    forget: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Counts with the rows selected by `forget` removed; pure, jittable, vmappable over `forget`.

    Args:
      stats_counts: int32 `[codebooks, keys, classes]`.
      codes: int32 `[n, codebooks, top_k]`, the stored codes.
      labels: int32 `[n]`.
      rank_weights: int32 `[top_k]`.
      forget: bool `[n]`, True for the rows to remove.

    Returns:
      New counts and a bool scalar, True when every count stayed non-negative (it always does
      when the rows were counted into `stats_counts`; False flags a corrupted state).
    """
    num_codebooks, num_keys, num_classes = stats_counts.shape
    removed = counts_from_codes(
        codes, labels, num_keys, num_classes, rank_weights, forget.astype(jnp.int32)
    )
    out = stats_counts - removed
    return out, jnp.all(out >= 0)


def fingerprint(variables: dict) -> str:
    """Hash of what the codes depend on: keys, projection (if any) and search mask."""
    parts = []
    frozen = variables["frozen"]
    for name in sorted(frozen):
        a = np.asarray(frozen[name])
        parts += [f"{name}{a.shape}{a.dtype}", a]
    parts += ["search", np.packbits(np.asarray(variables["mask"]["search"]))]
    if "splitter" in variables.get("params", {}):
        parts += jax.tree_util.tree_leaves(variables["params"]["splitter"])
    return _fingerprint.sha256(*parts, length=16)
