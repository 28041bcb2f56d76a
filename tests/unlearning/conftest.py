"""A small trained DKVB on clustered data (each class owns distinct clusters), built once."""

import types

import jax
import numpy as np
import pytest

from dkvb_jax import DKVB, DKVBConfig, KeyInitConfig, ValueTrainConfig, fit_keys, train_values
from dkvb_jax.testing import clustered_embeddings
from dkvb_jax.training import compute_codes, key_usage

CFG = DKVBConfig(embed_dim=32, num_classes=5, num_codebooks=16, num_keys=64, key_dim=4)


@pytest.fixture(scope="session")
def trained():
    """Model, trained variables, train/test splits, per-class usage and training codes."""
    x, y = clustered_embeddings(0, 1200)
    xt, yt = clustered_embeddings(1, 600)
    model = DKVB(CFG)
    v = model.init(jax.random.key(0), x[:2])
    v, _ = fit_keys(
        model, v, x, key=jax.random.key(1), config=KeyInitConfig(epochs=2), progress=False
    )
    v, hist = train_values(
        model, v, x, y, key=jax.random.key(2), config=ValueTrainConfig(epochs=2), progress=False
    )
    v = jax.tree.map(np.asarray, v)  # concrete host arrays: tests compare them bit for bit
    assert hist.accuracy[-1] > 0.99, hist
    return types.SimpleNamespace(
        model=model,
        v=v,
        x=x,
        y=y,
        xt=xt,
        yt=yt,
        usage=np.asarray(key_usage(model, v, x, y)),
        codes=compute_codes(model, v, x),
    )
