"""The DKVB model: splitter, nearest-key lookup, decoders and the Flax module."""

from dkvb_jax.model.decoders import Decoder, vote
from dkvb_jax.model.dkvb import DKVB
from dkvb_jax.model.lookup import Lookup, auto_chunk, nearest_keys, squared_distances
from dkvb_jax.model.splitter import random_projection

__all__ = [
    "DKVB",
    "Decoder",
    "Lookup",
    "auto_chunk",
    "nearest_keys",
    "random_projection",
    "squared_distances",
    "vote",
]
