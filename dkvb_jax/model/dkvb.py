"""The discrete key-value bottleneck as a Flax linen module.

Variable collections (the layout every part of the library relies on):

- ``params``: ``values`` `[codebooks, keys, value_dim]` (zeros at init), plus ``decoder``
  (linear/MLP decoders) and ``splitter`` (learned splitter) weights. The only trainable part.
- ``frozen``: ``keys`` `[codebooks, keys, key_dim]` and, for the random-projection splitter,
  ``projection`` `[embed_dim, codebooks, key_dim]`. Set by key initialisation, never by an
  optimiser.
- ``mask``: ``search`` and ``readout``, bool `[codebooks, keys]`, True where a pair is switched
  off. A ``search``-masked key is excluded from the nearest-key search (its inputs fall back to
  the next-nearest active key); a ``readout``-masked pair is still found but reads as zero.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dkvb_jax import _validation
from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import lookup as lookup_lib
from dkvb_jax.model import splitter as splitter_lib
from dkvb_jax.model.decoders import Decoder


class DKVB(nn.Module):
    """Discrete key-value bottleneck over frozen-encoder embeddings.

    Inputs are pooled embeddings `[batch, embed_dim]`, or token/feature-map embeddings
    `[batch, tokens, embed_dim]` whose tokens are looked up one by one and whose retrieved
    values are averaged before decoding.
    """

    config: DKVBConfig

    def setup(self):
        cfg = self.config
        c, k, d = cfg.num_codebooks, cfg.num_keys, cfg.key_dim
        self.keys = self.variable(
            "frozen", "keys", lambda: jax.random.normal(self.make_rng("params"), (c, k, d))
        )
        if cfg.splitter == "random_projection":
            self.projection = self.variable(
                "frozen",
                "projection",
                lambda: splitter_lib.random_projection(
                    self.make_rng("params"), cfg.embed_dim, c, d
                ),
            )
        elif cfg.splitter == "learned":
            self.splitter = nn.Dense(c * d, use_bias=False, name="splitter")
        self.values = self.param(
            "values", nn.initializers.zeros, (c, k, cfg.resolved_value_dim), jnp.float32
        )
        self.search_mask = self.variable("mask", "search", lambda: jnp.zeros((c, k), bool))
        self.readout_mask = self.variable("mask", "readout", lambda: jnp.zeros((c, k), bool))
        self.decoder = Decoder(cfg, name="decoder")

    def queries(self, x: jax.Array) -> jax.Array:
        """Splits embeddings `[batch, embed_dim]` into queries `[batch, codebooks, key_dim]`."""
        cfg = self.config
        _validation.check_embeddings(x, cfg.embed_dim, allow_tokens=False)
        if cfg.splitter == "random_projection":
            return splitter_lib.project(x, self.projection.value)
        if cfg.splitter == "chunk":
            return splitter_lib.chunk(x, cfg.num_codebooks, cfg.key_dim)
        return self.splitter(x).reshape(x.shape[0], cfg.num_codebooks, cfg.key_dim)

    def lookup(self, x: jax.Array) -> lookup_lib.Lookup:
        """Nearest active keys for embeddings `[batch, embed_dim]` (all `[batch, codebooks, top_k]`)."""
        cfg = self.config
        return lookup_lib.nearest_keys(
            self.queries(x),
            self.keys.value,
            self.search_mask.value,
            top_k=cfg.top_k,
            chunk=cfg.lookup_chunk,
            memory_mb=cfg.lookup_memory_mb,
            method=cfg.lookup_method,
        )

    def codes(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Discrete codes: indices int32 `[batch, codebooks, top_k]` (-1 if invalid) and validity."""
        result = self.lookup(x)
        return result.indices, result.valid

    def retrieve(self, indices: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reads the values of codes `[batch, codebooks, top_k]`.

        Returns:
          Per-codebook values `[batch, codebooks, value_dim]` (mean over the valid top-k; a
          readout-masked pair reads as zero) and presence bool `[batch, codebooks]`.
        """
        safe = jnp.where(valid, indices, 0)
        cb = jnp.arange(self.config.num_codebooks)[None, :, None]
        vals = self.values[cb, safe]  # [batch, codebooks, top_k, value_dim]
        live = valid & ~self.readout_mask.value[cb, safe]
        vals = vals * live[..., None].astype(vals.dtype)
        n = valid.sum(axis=-1)
        per_codebook = vals.sum(axis=2) / jnp.maximum(n, 1)[..., None].astype(vals.dtype)
        return per_codebook, n > 0

    def decode_codes(self, indices: jax.Array, valid: jax.Array) -> jax.Array:
        """Logits `[batch, classes]` from precomputed codes `[batch, codebooks, top_k]`.

        With frozen keys an input's codes never change while the masks stay the same, so value
        training and evaluation can run on codes computed once.
        """
        values, present = self.retrieve(indices, valid)
        return self.decoder(values, present)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits `[batch, classes]` for embeddings `[batch, embed_dim]` or `[batch, tokens, embed_dim]`."""
        cfg = self.config
        _validation.check_embeddings(x, cfg.embed_dim)
        if x.ndim == 2:
            return self.decode_codes(*self.codes(x))
        batch, tokens, _ = x.shape
        idx, valid = self.codes(x.reshape(batch * tokens, cfg.embed_dim))
        values, present = self.retrieve(idx, valid)
        values = values.reshape(batch, tokens, *values.shape[1:])
        present = present.reshape(batch, tokens, -1)
        w = present.astype(values.dtype)
        # Average each codebook's value over the tokens that retrieved something from it.
        mean = jnp.einsum("btcv,btc->bcv", values, w) / jnp.maximum(w.sum(1), 1.0)[..., None]
        return self.decoder(mean, present.any(axis=1))
