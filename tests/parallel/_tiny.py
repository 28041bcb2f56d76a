"""A tiny trained DKVB problem shared by the parallel tests and the multi-host worker."""

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax.config import DKVBConfig
from dkvb_jax.model import DKVB
from dkvb_jax.training import KeyInitConfig, ValueTrainConfig

CONFIG = DKVBConfig(embed_dim=16, num_classes=3, num_codebooks=8, num_keys=16, key_dim=4)
# Settings of the data-parallel training checks (batches divisible by 8 devices).
VALUES = ValueTrainConfig(epochs=2, batch_size=16, learning_rate=0.5)
# dead_threshold 0.5 makes re-seeding happen, so the checks cover the random draws too.
KEYS = KeyInitConfig(epochs=2, batch_size=16, dead_threshold=0.5)


def tiny_problem(n: int = 53, config: DKVBConfig = CONFIG, seed: int = 0):
    """Model, variables with non-trivial values and a partial search mask, data `[n, 16]`, labels.

    `n` is prime by default so that every split over devices and batches is ragged.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(config.num_classes, config.embed_dim)) * 2
    y = rng.integers(0, config.num_classes, n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, config.embed_dim))).astype(np.float32)
    model = DKVB(config)
    variables = model.init(jax.random.key(seed), jnp.asarray(x[:2]))
    values = jax.random.normal(jax.random.key(seed + 1), variables["params"]["values"].shape)
    search = jnp.zeros_like(variables["mask"]["search"]).at[:, :3].set(True)
    variables = {
        **variables,
        "params": {**variables["params"], "values": values},
        "mask": {**variables["mask"], "search": search},
    }
    return model, variables, x, y
