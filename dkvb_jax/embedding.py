"""Encode a dataset split once with a frozen encoder, through the on-disk embedding cache."""

from __future__ import annotations

import os
import pathlib

from dkvb_jax.data import CachedEmbeddings, cached_embeddings, get_source
from dkvb_jax.encoders import Encoder, get_encoder

DEFAULT_CACHE_DIR = pathlib.Path(os.environ.get("DKVB_CACHE_DIR", "~/.cache/dkvb_jax")).expanduser()


def embed_dataset(
    encoder: str | Encoder,
    dataset: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    batch_size: int = 128,
    rebuild: bool = False,
    progress: bool = True,
) -> CachedEmbeddings:
    """Embeddings `[n, embed_dim]`, labels and ids of a dataset split, cached on disk.

    Args:
      encoder: a registered encoder name (see `dkvb_jax.encoders.list_encoders`) or an Encoder.
      dataset: a dataset name (see `dkvb_jax.data.DATASETS`).
      split: ``train`` or ``test``.
      data_dir: where the dataset lives (see `dkvb_jax.data.get_source`).
      cache_dir: root of the embedding cache (``$DKVB_CACHE_DIR`` or ``~/.cache/dkvb_jax``).
      batch_size: images per encoder call.
      rebuild: encode again even when a valid cache entry exists.
      progress: show a progress bar while encoding.
    """
    enc = get_encoder(encoder)
    source = get_source(dataset, split, data_dir=data_dir)
    # The encoder's preprocess resizes and normalises: its name and input size pin it down.
    tag = f"{enc.name}_in{enc.input_size}"
    return cached_embeddings(
        lambda images: enc.embed(images, batch_size=batch_size),
        source,
        cache_dir=cache_dir,
        encoder_name=enc.name,
        dataset_name=dataset if data_dir is None else f"{dataset}-{pathlib.Path(data_dir).name}",
        split=split,
        preprocessing_tag=tag,
        batch_size=batch_size,
        rebuild=rebuild,
        progress=progress,
    )
