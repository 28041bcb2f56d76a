"""Applying a selection `[codebooks, keys]` to a variables pytree: soft masks and hard deletion.

All functions are pure (new dicts, input untouched) and jittable; every leaf they do not name is
passed through as the same array, so keys, projection, decoder weights and the values of
unmasked pairs stay bit-identical.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from dkvb_jax.errors import InputError, InputTypeError

MaskMode = Literal["search", "readout"]
MASK_MODES: tuple[str, ...] = ("search", "readout")
Rekey = Literal["far", "random"] | None
REKEY_MODES: tuple = (None, "far", "random")

# A re-placed key sits this many times the codebook's largest key norm away from the origin:
# no query from the data distribution can ever have it as nearest key again.
FAR_FACTOR = 1e3


def check_mode(mode: str) -> None:
    if mode not in MASK_MODES:
        raise ValueError(
            f"mode must be one of {MASK_MODES} ('search': excluded from the nearest-key search, "
            f"'readout': found but read as zero), got {mode!r}."
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskingOptions:
    """How a selection `[codebooks, keys]` is applied: masked, or hard-deleted and re-keyed.

    The options every masking wrapper forwards together to :func:`apply_selection` /
    :func:`hard_delete`, checked once when the pack is built.

    Attributes:
      mode: mask collection to set, ``search`` or ``readout`` (see :func:`apply_selection`).
      hard: also zero the values of the selected pairs (:func:`hard_delete`).
      rekey: with `hard`, re-place their keys: None, ``'far'`` or ``'random'`` (needs `rng`).
      rng: PRNG key from ``jax.random.key`` for ``rekey='random'``.
    """

    mode: MaskMode = "search"
    hard: bool = False
    rekey: Rekey = None
    rng: jax.Array | None = None

    def __post_init__(self):
        check_mode(self.mode)
        if self.rekey not in REKEY_MODES:
            raise InputError(f"rekey must be one of {REKEY_MODES}, got {self.rekey!r}.")
        if self.rekey is not None and not self.hard:
            raise InputError("rekey re-places keys of hard-deleted pairs: pass hard=True with it.")
        if self.rekey == "random" and self.rng is None:
            raise InputError("rekey='random' needs rng=jax.random.key(...).")
        if self.rng is not None and not _is_prng_key(self.rng):
            rng = self.rng
            raise InputTypeError(
                f"rng must be a PRNG key from jax.random.key(seed), got {type(rng).__name__} "
                f"{getattr(rng, 'dtype', '')} {getattr(rng, 'shape', '')}."
            )

    def apply(self, variables: dict, selection: jax.Array) -> dict:
        """New variables with `selection` masked (and, with `hard`, deleted)."""
        if self.hard:
            return hard_delete(variables, selection, mode=self.mode, rekey=self.rekey, rng=self.rng)
        return apply_selection(variables, selection, self.mode)

    def params(self) -> dict:
        """The audit record's view of the edit (the key itself is not recorded)."""
        return {"mode": self.mode, "hard": self.hard, "rekey": self.rekey}


def _is_prng_key(rng) -> bool:
    dtype = getattr(rng, "dtype", None)
    if dtype is None or getattr(rng, "shape", None) is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return rng.shape == ()
    return dtype == jnp.uint32 and tuple(rng.shape) == (2,)  # a raw jax.random.PRNGKey


def apply_selection(variables: dict, selection: jax.Array, mode: MaskMode = "search") -> dict:
    """Masks the selected pairs, on top of the masks already set (masks only accumulate).

    Args:
      variables: DKVB variables.
      selection: bool `[codebooks, keys]`, True for pairs to switch off.
      mode: ``search`` (default; the key is excluded from the nearest-key search and its inputs
        fall back to the next-nearest active key) or ``readout`` (the key is still found but its
        value reads as zero).

    Returns:
      New variables; only ``mask/<mode>`` differs.
    """
    check_mode(mode)
    mask = dict(variables["mask"])
    mask[mode] = mask[mode] | selection.astype(bool)
    return {**variables, "mask": mask}


def clear_masks(variables: dict, modes: tuple[str, ...] = MASK_MODES) -> dict:
    """Switches every pair back on (un-masking). Hard-deleted pairs stay deleted."""
    for m in modes:
        check_mode(m)
    mask = {
        name: (jnp.zeros_like(m) if name in modes else m) for name, m in variables["mask"].items()
    }
    return {**variables, "mask": mask}


def hard_delete(
    variables: dict,
    selection: jax.Array,
    *,
    mode: MaskMode = "search",
    rekey: Rekey = None,
    rng: jax.Array | None = None,
) -> dict:
    """Masks the selected pairs and destroys what they stored, so un-masking cannot restore it.

    The values of the selected pairs are zeroed in ``params/values``. Optionally their keys are
    re-placed as well, so the checkpoint no longer reveals where the forgotten data lay:

    - ``'far'``: onto a point `FAR_FACTOR` times the codebook's largest key norm away along the
      all-ones direction; even un-masked such a key is never anyone's nearest key.
    - ``'random'``: onto fresh normal draws with the codebook's per-dimension key mean and
      standard deviation (needs `rng`); un-masked, it may be retrieved but reads a zero value.

    Args:
      variables: DKVB variables.
      selection: bool `[codebooks, keys]`.
      mode: mask collection to set, as in :func:`apply_selection`.
      rekey: ``None`` (keep keys), ``'far'`` or ``'random'``.
      rng: PRNG key, required for ``rekey='random'``.

    Returns:
      New variables; ``mask/<mode>``, the selected rows of ``params/values`` and, with `rekey`,
      the selected rows of ``frozen/keys`` differ.
    """
    if rekey not in REKEY_MODES:
        raise ValueError(f"rekey must be one of {REKEY_MODES}, got {rekey!r}.")
    if rekey == "random" and rng is None:
        raise ValueError("rekey='random' needs rng=jax.random.key(...) to draw the new keys.")
    sel = selection.astype(bool)
    # Statistics for re-placed keys come from the pairs still live after this call only, so
    # repeating the request (with the same rng) reproduces the same keys: a no-op.
    live = ~(masked_pairs(variables) | sel)  # [codebooks, keys]
    out = apply_selection(variables, sel, mode)
    values = out["params"]["values"]
    out["params"] = {**out["params"], "values": jnp.where(sel[..., None], 0, values)}
    if rekey is not None:
        keys = out["frozen"]["keys"]  # [codebooks, keys, key_dim]
        if rekey == "far":
            radius = jnp.where(live, jnp.linalg.norm(keys, axis=-1), 0).max(axis=-1)
            d = keys.shape[-1]
            point = (FAR_FACTOR * (1.0 + radius))[:, None] * jnp.ones((d,), keys.dtype) / d**0.5
            new = jnp.broadcast_to(point[:, None, :], keys.shape)
        else:
            w = live[..., None].astype(keys.dtype)
            count = jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)
            mean = (keys * w).sum(axis=1, keepdims=True) / count
            std = jnp.sqrt(((keys - mean) ** 2 * w).sum(axis=1, keepdims=True) / count)
            new = mean + std * jax.random.normal(rng, keys.shape, keys.dtype)
        out["frozen"] = {**out["frozen"], "keys": jnp.where(sel[..., None], new, keys)}
    return out


def masked_pairs(variables: dict, mode: MaskMode | None = None) -> jax.Array:
    """bool `[codebooks, keys]`: pairs masked in `mode`, or in either mode when None."""
    if mode is None:
        return variables["mask"]["search"] | variables["mask"]["readout"]
    check_mode(mode)
    return variables["mask"][mode]
