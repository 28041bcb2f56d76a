"""Input data: sources of labelled images, per-host batching, and the embedding cache.

Every source serves batches ``{'image': uint8 [b, H, W, 3], 'label': int32 [b], 'id': int64 [b],
'valid': bool [b]}`` (see :mod:`dkvb_jax.data.sources`).
"""

from dkvb_jax.data.cache import (
    CachedEmbeddings,
    CacheRebuildWarning,
    cache_path,
    cached_embeddings,
)
from dkvb_jax.data.image_folder import CIFAR10_CLASSES, ImageFolderSource
from dkvb_jax.data.registry import DATASETS, get_source
from dkvb_jax.data.sample import cifar10_sample_path, load_cifar10_sample
from dkvb_jax.data.sharding import BatchPlan, batch_plan
from dkvb_jax.data.sources import ArraySource, ImageSource, Source
from dkvb_jax.data.tfds_source import TfdsSource, load_tfds, tensorflow_available

__all__ = [
    "ArraySource",
    "BatchPlan",
    "CIFAR10_CLASSES",
    "DATASETS",
    "CacheRebuildWarning",
    "CachedEmbeddings",
    "ImageFolderSource",
    "ImageSource",
    "Source",
    "TfdsSource",
    "batch_plan",
    "cache_path",
    "cached_embeddings",
    "cifar10_sample_path",
    "get_source",
    "load_cifar10_sample",
    "load_tfds",
    "tensorflow_available",
]
