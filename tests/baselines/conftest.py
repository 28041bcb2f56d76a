"""Synthetic clustered embeddings and a trained linear head, shared by the baseline tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax.baselines import LinearHead, TrainConfig, class_unlearning_data, fit_classifier

NUM_CLASSES, CLUSTERS, DIM, PER_CLASS = 4, 2, 16, 40


def clustered(seed: int, noise: float = 0.7):
    """4 classes x 2 Gaussian clusters in 16-d: (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(NUM_CLASSES * CLUSTERS, DIM))

    def sample():
        cluster = rng.integers(0, NUM_CLASSES * CLUSTERS, size=PER_CLASS * NUM_CLASSES)
        x = centers[cluster] + noise * rng.normal(size=(cluster.size, DIM))
        return x.astype(np.float32), (cluster // CLUSTERS).astype(np.int32)

    return (*sample(), *sample())


@pytest.fixture(scope="session")
def problem():
    """(head, original variables, UnlearningData forgetting class 0 with test splits as val_*)."""
    x, y, xt, yt = clustered(0)
    head = LinearHead(NUM_CLASSES)
    variables = head.init(jax.random.key(0), jnp.zeros((1, DIM)))
    variables, _, _ = fit_classifier(
        head.apply, variables, x, y, TrainConfig(epochs=20, batch_size=32), key=jax.random.key(1)
    )
    return head, variables, class_unlearning_data(x, y, 0, val_x=xt, val_y=yt)
