"""An on-disk cache of frozen-encoder embeddings, keyed by encoder, dataset, split, preprocessing.

Because the encoder is frozen, a split is encoded once; later runs load the arrays in about a
second. One cache entry is a folder ``<cache_dir>/<dataset>-<split>-<encoder>-<tag>-<hash>/``:

    embeddings.npy   float32 (default) or float16 [num_examples, embed_dim]
    labels.npy       int32   [num_examples]
    ids.npy          int64   [num_examples]   (the source's example ids, in source order)
    manifest.json    the key, shapes, dtype, class names and the sha256 + size of each .npy

Safety: every file is written under a temporary name and moved into place with ``os.replace``,
and the manifest is removed first and written last, so it is the commit record: a folder without
a manifest is an interrupted build. On load the manifest's key, example count, file sizes and
(with ``verify="hash"``, the default) sha256 digests are checked; any mismatch, truncation or
unreadable file triggers a :class:`CacheRebuildWarning` and a rebuild, never a silent use.

float16 halves the disk and memory footprint; its ~3 significant digits are ample for key
initialisation and nearest-key lookup, but float32 is the default so results match an uncached run
bit for bit.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from dkvb_jax import _fingerprint
from dkvb_jax._progress import progress_bar
from dkvb_jax.data.sources import Source

FORMAT_VERSION = 1
_ARRAYS = ("embeddings", "labels", "ids")
_DTYPES = {"float32": np.float32, "float16": np.float16}


class CacheRebuildWarning(UserWarning):
    """A cache entry existed but was incomplete, corrupted or stale, and is being rebuilt."""


@dataclasses.dataclass(frozen=True)
class CachedEmbeddings:
    """Embeddings of one split.

    Attributes:
        embeddings: ``[num_examples, embed_dim]`` float32 or float16.
        labels: int32 ``[num_examples]``.
        ids: int64 ``[num_examples]``, the source's example ids.
        class_names: label names of the source.
        path: the cache entry's folder.
        manifest: the parsed ``manifest.json``.
        from_cache: True when loaded, False when encoded in this call.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: tuple[str, ...]
    path: pathlib.Path
    manifest: dict[str, Any]
    from_cache: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def cache_path(
    cache_dir: str | os.PathLike,
    *,
    encoder_name: str,
    dataset_name: str,
    split: str,
    preprocessing_tag: str,
) -> pathlib.Path:
    """The folder of the cache entry for this key (readable prefix + hash of the exact key)."""
    key = _key(encoder_name, dataset_name, split, preprocessing_tag)
    digest = _fingerprint.json_sha256(key, length=12)
    readable = "-".join(
        re.sub(r"[^A-Za-z0-9_.]+", "_", key[k])
        for k in ("dataset", "split", "encoder", "preprocessing")
    )
    return pathlib.Path(cache_dir) / f"{readable[:120]}-{digest}"


def _key(encoder_name, dataset_name, split, preprocessing_tag) -> dict[str, str]:
    key = dict(
        encoder=encoder_name, dataset=dataset_name, split=split, preprocessing=preprocessing_tag
    )
    for name, value in key.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"The cache key's {name} must be a non-empty str, got {value!r}.")
    return key


def _fsync_replace(tmp: pathlib.Path, final: pathlib.Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _read_npy(file: pathlib.Path, sha256: str | None) -> np.ndarray:
    """Reads a .npy in one pass, checking its sha256 on the same bytes it parses."""
    data = bytearray(file.stat().st_size)
    with open(file, "rb") as f:
        if f.readinto(data) != len(data):
            raise ValueError(f"{file.name} changed size while being read")
    if sha256 is not None and _fingerprint.sha256(data) != sha256:
        raise ValueError(f"{file.name} does not match its sha256 in the manifest")
    header = io.BytesIO(data[:4096])
    version = np.lib.format.read_magic(header)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ValueError(f"{file.name} has unsupported .npy version {version}")
    shape, fortran, dtype = readers[version](header)
    if dtype.hasobject:
        raise ValueError(f"{file.name} holds Python objects, not numbers")
    count = int(np.prod(shape))
    if header.tell() + count * dtype.itemsize != len(data):
        raise ValueError(f"{file.name} has {len(data)} bytes, its header says {shape} {dtype}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def _load(path: pathlib.Path, key: dict, num_examples: int, verify: str) -> CachedEmbeddings:
    """Loads and checks an entry; raises ValueError saying what is wrong."""
    manifest_file = path / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable manifest ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("key") != key:
        raise ValueError(
            f"manifest is for {manifest.get('key')}, version "
            f"{manifest.get('format_version')}; expected {key}, {FORMAT_VERSION}"
        )
    if manifest.get("num_examples") != num_examples:
        raise ValueError(
            f"it holds {manifest.get('num_examples')} examples but the source has "
            f"{num_examples} (the dataset changed?)"
        )
    arrays = {}
    for name in _ARRAYS:
        file = path / f"{name}.npy"
        meta = manifest["files"][name]
        if not file.exists() or file.stat().st_size != meta["bytes"]:
            size = file.stat().st_size if file.exists() else "missing"
            raise ValueError(f"{file.name} has size {size}, manifest says {meta['bytes']}")
        arrays[name] = _read_npy(file, meta["sha256"] if verify == "hash" else None)
    emb = arrays["embeddings"]
    expected = (num_examples, manifest["embed_dim"])
    if emb.shape != expected or emb.dtype != np.dtype(manifest["dtype"]):
        raise ValueError(
            f"embeddings are {emb.dtype}{emb.shape}, manifest says {manifest['dtype']}{expected}"
        )
    if arrays["labels"].shape != (num_examples,) or arrays["ids"].shape != (num_examples,):
        raise ValueError("labels or ids have the wrong shape")
    return CachedEmbeddings(
        embeddings=emb,
        labels=arrays["labels"],
        ids=arrays["ids"],
        class_names=tuple(manifest["class_names"]),
        path=path,
        manifest=manifest,
        from_cache=True,
    )


def _check_output(out: Any, batch: int, step: int) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[0] != batch:
        raise ValueError(
            f"encode_fn must return [batch={batch}, embed_dim] for a batch of "
            f"{batch} images, got shape {out.shape} (batch {step})."
        )
    if not np.issubdtype(out.dtype, np.floating):
        raise TypeError(f"encode_fn must return floats, got {out.dtype} (batch {step}).")
    return out


def _build(encode_fn, source, path, key, *, batch_size, dtype, progress) -> CachedEmbeddings:
    path.mkdir(parents=True, exist_ok=True)
    # The manifest goes first: from here until the new one lands, the entry reads as incomplete.
    (path / "manifest.json").unlink(missing_ok=True)
    n = len(source)
    tag = uuid.uuid4().hex[:8]
    tmp = {name: path / f".{name}.npy.tmp-{tag}" for name in _ARRAYS}
    labels = np.lib.format.open_memmap(tmp["labels"], "w+", np.int32, (n,))
    ids = np.lib.format.open_memmap(tmp["ids"], "w+", np.int64, (n,))
    emb = None
    start, pos = time.perf_counter(), 0
    desc = f"encode {key['dataset']}/{key['split']} ({key['encoder']})"
    try:
        with progress_bar(total=n, desc=desc, unit="img", disable=not progress) as bar:
            batches = source.batches(
                batch_size, drop_remainder=False, process_index=0, process_count=1
            )
            for step, batch in enumerate(batches):
                # The padded last batch is encoded whole (static shape for jit); padding is dropped.
                out = _check_output(encode_fn(batch["image"]), len(batch["image"]), step)
                valid = batch["valid"]
                with np.errstate(over="ignore"):  # Overflow is reported just below.
                    out = out[valid].astype(dtype)
                if not np.isfinite(out).all():
                    raise ValueError(
                        f"encode_fn returned NaN/inf (or values beyond {dtype.__name__}"
                        f") for batch {step}; check the encoder and its inputs."
                    )
                if emb is None:
                    emb = np.lib.format.open_memmap(
                        tmp["embeddings"], "w+", dtype, (n, out.shape[1])
                    )
                elif out.shape[1] != emb.shape[1]:
                    raise ValueError(
                        f"encode_fn changed embed_dim from {emb.shape[1]} to "
                        f"{out.shape[1]} at batch {step}."
                    )
                k = out.shape[0]
                emb[pos : pos + k] = out
                labels[pos : pos + k] = batch["label"][valid]
                ids[pos : pos + k] = batch["id"][valid]
                pos += k
                bar.update(k)
        if pos != n or emb is None:
            raise ValueError(f"The source yielded {pos} examples, but len(source) is {n}.")
        seconds = time.perf_counter() - start
        embed_dim = int(emb.shape[1])
        for arr in (emb, labels, ids):
            arr.flush()
        del emb, labels, ids, arr  # Close the memmaps before hashing and moving the files.
        files = {}
        for name in _ARRAYS:
            files[name] = {
                "sha256": _fingerprint.file_sha256(tmp[name]),
                "bytes": tmp[name].stat().st_size,
            }
            _fsync_replace(tmp[name], path / f"{name}.npy")
        manifest = dict(
            format_version=FORMAT_VERSION,
            key=key,
            num_examples=n,
            embed_dim=embed_dim,
            dtype=np.dtype(dtype).name,
            class_names=list(source.class_names),
            files=files,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            encode_seconds=round(seconds, 3),
            images_per_second=round(n / max(seconds, 1e-9), 1),
        )
        tmp_manifest = path / f".manifest.json.tmp-{tag}"
        tmp_manifest.write_text(json.dumps(manifest, indent=2))
        _fsync_replace(tmp_manifest, path / "manifest.json")
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    loaded = _load(path, key, n, verify="size")
    return dataclasses.replace(loaded, from_cache=False)


def cached_embeddings(
    encode_fn: Callable[[np.ndarray], Any],
    source: Source,
    *,
    cache_dir: str | os.PathLike,
    encoder_name: str,
    dataset_name: str,
    split: str,
    preprocessing_tag: str,
    batch_size: int = 256,
    dtype: str = "float32",
    verify: str = "hash",
    rebuild: bool = False,
    progress: bool = True,
) -> CachedEmbeddings:
    """Embeddings of every example of ``source``, encoded once and then loaded from disk.

    Args:
        encode_fn: uint8 images ``[b, H, W, 3]`` -> float ``[b, D]`` (NumPy or JAX); it gets
            full batches of ``batch_size`` (the last one padded), so a jitted encoder compiles once.
        source: the split to encode (a :class:`dkvb_jax.data.sources.Source`).
        cache_dir: root folder of the cache.
        encoder_name: names the encoder and its weights, e.g. ``"mobilenet_v1"``.
        dataset_name: e.g. ``"cifar10"`` or ``"cifar10_sample"``.
        split: e.g. ``"train"``.
        preprocessing_tag: anything else that changes the embeddings (resize, normalisation),
            e.g. ``"224_bilinear_imagenet"``; change it whenever the preprocessing changes.
        batch_size: images per ``encode_fn`` call.
        dtype: ``"float32"`` (default) or ``"float16"`` storage.
        verify: ``"hash"`` (sha256 of every file, default) or ``"size"`` (sizes only, faster for
            very large entries) when loading.
        rebuild: encode again even if a valid entry exists.
        progress: show a tqdm progress bar while encoding.

    Returns:
        :class:`CachedEmbeddings` (``from_cache`` says whether it was loaded).
    """
    key = _key(encoder_name, dataset_name, split, preprocessing_tag)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}.")
    if verify not in ("hash", "size"):
        raise ValueError(f"verify must be 'hash' or 'size', got {verify!r}.")
    if not callable(encode_fn):
        raise TypeError(f"encode_fn must be callable, got {type(encode_fn).__name__}.")
    path = cache_path(
        cache_dir,
        encoder_name=encoder_name,
        dataset_name=dataset_name,
        split=split,
        preprocessing_tag=preprocessing_tag,
    )
    if not rebuild and path.exists():
        if (path / "manifest.json").exists():
            try:
                return _load(path, key, len(source), verify)
            except (ValueError, KeyError, OSError) as e:
                warnings.warn(
                    f"Embedding cache {path} is invalid: {e}; rebuilding it.",
                    CacheRebuildWarning,
                    stacklevel=2,
                )
        elif any(path.iterdir()):
            warnings.warn(
                f"Embedding cache {path} has no manifest (an interrupted build); rebuilding it.",
                CacheRebuildWarning,
                stacklevel=2,
            )
    return _build(
        encode_fn, source, path, key, batch_size=batch_size, dtype=_DTYPES[dtype], progress=progress
    )
