"""Static configuration of a discrete key-value bottleneck.

Defaults follow the paper (Träuble et al., 2023): 256 codebooks of 4096 keys of dimension 14,
top-1 retrieval, a fixed random-projection splitter and the parameter-free vote decoder.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Splitter = Literal["random_projection", "chunk", "learned"]
Decoder = Literal["vote", "linear", "mlp"]

SPLITTERS: tuple[str, ...] = ("random_projection", "chunk", "learned")
DECODERS: tuple[str, ...] = ("vote", "linear", "mlp")
LOOKUP_METHODS: tuple[str, ...] = ("auto", "blocked", "dense", "approx", "rerank")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DKVBConfig:
    """Configuration of a :class:`dkvb_jax.DKVB` model.

    Attributes:
        embed_dim: Dimension D of the encoder's pooled embedding.
        num_classes: Number of output classes.
        num_codebooks: Number C of independent codebooks (heads).
        num_keys: Number K of key-value pairs per codebook.
        key_dim: Dimension of each key. With the ``chunk`` splitter it must equal
            ``embed_dim // num_codebooks``.
        top_k: Keys retrieved per codebook.
        splitter: How an embedding becomes C queries: a fixed random projection
            (unit-norm columns, never trained), slicing into C chunks, or a learned projection.
        decoder: ``vote`` (mean of retrieved values used as logits, no parameters), ``linear`` or
            ``mlp`` over the concatenated retrieved values.
        value_dim: Dimension of each value; defaults to ``num_classes`` (required by ``vote``).
        mlp_hidden: Hidden width of the ``mlp`` decoder.
        lookup_chunk: Batch rows per chunk of the distance computation. ``None`` picks a chunk
            from ``lookup_memory_mb``; ``0`` disables chunking (materialises the full distance
            tensor, only sensible for small models).
        lookup_memory_mb: Memory budget, in MiB, of one chunk of float32 distances
            ``[chunk, codebooks, keys]``.
        lookup_method: Search of :func:`dkvb_jax.model.lookup.nearest_keys`; ``auto`` picks it
            per backend (``rerank`` on GPU and TPU, ``blocked`` or ``dense`` on CPU).
        standardize: Whether the model expects standardised inputs. Informational for the
            splitter statistics; standardisation itself is applied by the caller.
    """

    embed_dim: int
    num_classes: int
    num_codebooks: int = 256
    num_keys: int = 4096
    key_dim: int = 14
    top_k: int = 1
    splitter: Splitter = "random_projection"
    decoder: Decoder = "vote"
    value_dim: int | None = None
    mlp_hidden: int = 512
    lookup_chunk: int | None = None
    lookup_memory_mb: float = 64.0
    lookup_method: str = "auto"

    def __post_init__(self):
        for name in (
            "embed_dim",
            "num_classes",
            "num_codebooks",
            "num_keys",
            "key_dim",
            "top_k",
            "mlp_hidden",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DKVBConfig.{name} must be a positive integer, got {value!r}.")
        if self.splitter not in SPLITTERS:
            raise ValueError(
                f"DKVBConfig.splitter must be one of {SPLITTERS}, got {self.splitter!r}."
            )
        if self.decoder not in DECODERS:
            raise ValueError(f"DKVBConfig.decoder must be one of {DECODERS}, got {self.decoder!r}.")
        if self.top_k > self.num_keys:
            raise ValueError(
                f"DKVBConfig.top_k={self.top_k} exceeds num_keys={self.num_keys}: a codebook cannot "
                "return more keys than it holds."
            )
        if self.value_dim is not None and (
            not isinstance(self.value_dim, int) or self.value_dim < 1
        ):
            raise ValueError(
                f"DKVBConfig.value_dim must be a positive integer or None, got {self.value_dim!r}."
            )
        if self.decoder == "vote" and self.resolved_value_dim != self.num_classes:
            raise ValueError(
                f"DKVBConfig.value_dim={self.value_dim} must equal num_classes={self.num_classes} for "
                "the vote decoder, whose logits are the mean retrieved value; use decoder='linear' or "
                "'mlp' for other value sizes."
            )
        if self.splitter == "chunk" and self.embed_dim != self.num_codebooks * self.key_dim:
            raise ValueError(
                f"DKVBConfig.key_dim={self.key_dim} does not fit the chunk splitter: embed_dim="
                f"{self.embed_dim} must equal num_codebooks * key_dim = "
                f"{self.num_codebooks * self.key_dim}. Set key_dim={self.embed_dim // self.num_codebooks}"
                " with a num_codebooks that divides embed_dim."
            )
        if self.lookup_chunk is not None and (
            isinstance(self.lookup_chunk, bool)
            or not isinstance(self.lookup_chunk, int)
            or self.lookup_chunk < 0
        ):
            raise ValueError(
                f"DKVBConfig.lookup_chunk must be None, 0 or a positive integer, got "
                f"{self.lookup_chunk!r}."
            )
        if not self.lookup_memory_mb > 0:
            raise ValueError(
                f"DKVBConfig.lookup_memory_mb must be positive, got {self.lookup_memory_mb!r}."
            )
        if self.lookup_method not in LOOKUP_METHODS:
            raise ValueError(
                f"DKVBConfig.lookup_method must be one of {LOOKUP_METHODS}, got "
                f"{self.lookup_method!r}."
            )

    @property
    def resolved_value_dim(self) -> int:
        return self.num_classes if self.value_dim is None else self.value_dim

    def replace(self, **changes) -> DKVBConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DKVBConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"Unknown DKVBConfig fields {sorted(unknown)}; known: {sorted(known)}."
            )
        return cls(**d)
