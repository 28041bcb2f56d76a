"""Discrete codes of a dataset: which pair each example retrieves in each codebook.

With frozen keys and unchanged masks an example's codes never change, so they are computed once
and serve value training, usage histograms and the unlearning of named examples.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from dkvb_jax import _batching, _validation
from dkvb_jax.model import DKVB


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _codes(model: DKVB, variables: dict, x: jax.Array, batch_size: int):
    return _batching.batched_apply(
        lambda xb: model.apply(variables, xb, method=DKVB.codes), x, batch_size
    )


def compute_codes(
    model: DKVB, variables: dict, x: np.ndarray | jax.Array, *, batch_size: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """Codes of embeddings `[n, embed_dim]`.

    Returns:
      indices int32 `[n, codebooks, top_k]` (-1 where invalid) and valid bool, same shape.
    """
    _validation.check_embeddings(x, model.config.embed_dim, allow_tokens=False)
    _validation.check_positive_int(batch_size, "batch_size")
    return _codes(model, variables, jax.numpy.asarray(x), batch_size)
