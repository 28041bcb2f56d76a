"""Synthetic data for tests, examples and benchmarks."""

from __future__ import annotations

import numpy as np


def clustered_embeddings(
    seed: int,
    n: int,
    *,
    num_classes: int = 5,
    clusters_per_class: int = 3,
    dim: int = 32,
    separation: float = 4.0,
    noise: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, each owned by one class, so every class occupies distinct regions.

    Args:
      seed: NumPy seed; the same seed gives the same data.
      n: number of examples.
      num_classes: number of classes.
      clusters_per_class: clusters each class owns.
      dim: embedding dimension.
      separation: scale of the cluster centres relative to the within-cluster noise.
      noise: within-cluster standard deviation.

    Returns:
      float32 embeddings `[n, dim]` and int32 labels `[n]`.
    """
    rng = np.random.default_rng(seed)
    # Centres are drawn once per configuration (independent of n) so train and test splits
    # drawn with different seeds share the same clusters.
    centre_rng = np.random.default_rng(
        [num_classes, clusters_per_class, dim, int(separation * 1000)]
    )
    centres = centre_rng.normal(size=(num_classes * clusters_per_class, dim)) * separation
    cluster = rng.integers(0, num_classes * clusters_per_class, n)
    x = centres[cluster] + rng.normal(size=(n, dim)) * noise
    return x.astype(np.float32), (cluster // clusters_per_class).astype(np.int32)
