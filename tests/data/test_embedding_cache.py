"""The embedding cache: hit, miss, keying, corruption, truncation and interruption."""

import json
import time

import numpy as np
import pytest

from dkvb_jax.data import ArraySource, CacheRebuildWarning, cache_path, cached_embeddings

KEY = dict(encoder_name="toy", dataset_name="rand", split="train", preprocessing_tag="none")


def _source(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return ArraySource(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), np.arange(n) % 4)


class Encoder:
    """A tiny deterministic encoder that counts its calls: [b, 4, 4, 3] -> [b, 6]."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at
        self.proj = np.random.default_rng(1).normal(size=(48, 6)).astype(np.float32)

    def __call__(self, images):
        if self.calls == self.fail_at:
            raise KeyboardInterrupt  # As if the user pressed Ctrl-C mid-encoding.
        self.calls += 1
        return (images.reshape(len(images), -1) / 255.0).astype(np.float32) @ self.proj


def _expected(src):
    enc = Encoder()
    b = src.read(np.arange(len(src)))
    return enc(b["image"]), b["label"]


def _cache(tmp_path, src=None, enc=None, **kwargs):
    return cached_embeddings(
        enc or Encoder(),
        src or _source(),
        cache_dir=tmp_path,
        batch_size=5,
        progress=False,
        **(KEY | kwargs),
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_miss_then_hit(tmp_path, dtype):
    src, enc = _source(), Encoder()
    first = _cache(tmp_path, src, enc, dtype=dtype)
    assert not first.from_cache and enc.calls == 5  # ceil(23 / 5) batches, last one padded.
    emb, labels = _expected(src)
    np.testing.assert_allclose(first.embeddings, emb.astype(dtype), rtol=1e-6)
    np.testing.assert_array_equal(first.labels, labels)
    np.testing.assert_array_equal(first.ids, np.arange(23))
    assert first.embeddings.dtype == np.dtype(dtype) and first.labels.dtype == np.int32
    again = _cache(tmp_path, src, enc, dtype=dtype)
    assert again.from_cache and enc.calls == 5  # Not encoded again.
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert again.class_names == src.class_names
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["num_examples"] == 23 and manifest["embed_dim"] == 6


@pytest.mark.parametrize("field", ["encoder_name", "dataset_name", "split", "preprocessing_tag"])
def test_each_key_field_separates_entries(tmp_path, field):
    enc = Encoder()
    _cache(tmp_path, enc=enc)
    other = _cache(tmp_path, enc=enc, **{field: "other"})
    assert not other.from_cache and other.path != cache_path(tmp_path, **KEY)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-8])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: _flip_byte(p / "embeddings.npy"), "sha256"),
        (lambda p: _flip_byte(p / "labels.npy"), "sha256"),
        (lambda p: _truncate(p / "embeddings.npy"), "size"),
        (lambda p: (p / "ids.npy").unlink(), "missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "unreadable manifest"),
        (lambda p: _truncate(p / "manifest.json"), "unreadable manifest"),
        (lambda p: (p / "manifest.json").unlink(), "no manifest"),
    ],
)
def test_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage, match):
    src = _source()
    good = _cache(tmp_path, src)
    damage(good.path)
    with pytest.warns(CacheRebuildWarning, match=match):
        rebuilt = _cache(tmp_path, src)
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.embeddings, good.embeddings)
    assert _cache(tmp_path, src).from_cache  # Healthy again.


def test_size_only_verification_misses_a_flipped_byte_but_not_truncation(tmp_path):
    good = _cache(tmp_path)
    _flip_byte(good.path / "embeddings.npy")
    assert _cache(tmp_path, verify="size").from_cache  # Documented trade-off of verify='size'.
    _truncate(good.path / "embeddings.npy")
    with pytest.warns(CacheRebuildWarning, match="size"):
        _cache(tmp_path, verify="size")


def test_changed_source_is_rebuilt(tmp_path):
    _cache(tmp_path, _source(23))
    with pytest.warns(CacheRebuildWarning, match="source has 30"):
        assert _cache(tmp_path, _source(30)).embeddings.shape == (30, 6)


@pytest.mark.parametrize("fail_at", [0, 2])
def test_interrupted_build_leaves_nothing_that_looks_valid(tmp_path, fail_at):
    src = _source()
    _cache(tmp_path, src)  # A complete older entry is replaced by the interrupted rebuild.
    with pytest.raises(KeyboardInterrupt):
        _cache(tmp_path, src, Encoder(fail_at=fail_at), rebuild=True)
    path = cache_path(tmp_path, **KEY)
    assert not (path / "manifest.json").exists()
    assert not [p for p in path.iterdir() if ".tmp-" in p.name]  # Temporaries cleaned up.
    with pytest.warns(CacheRebuildWarning, match="interrupted"):
        assert not _cache(tmp_path, src).from_cache


@pytest.mark.parametrize(
    "encode_fn, error, match",
    [
        (lambda x: np.zeros((len(x), 3, 2), np.float32), ValueError, "embed_dim"),
        (lambda x: np.zeros((1, 3), np.float32), ValueError, "batch=5"),
        (lambda x: np.zeros((len(x), 3), np.int32), TypeError, "floats"),
        (lambda x: np.full((len(x), 3), np.nan, np.float32), ValueError, "NaN"),
        ("not callable", TypeError, "callable"),
    ],
)
def test_bad_encoder_output_is_rejected_and_not_cached(tmp_path, encode_fn, error, match):
    with pytest.raises(error, match=match):
        _cache(tmp_path, enc=encode_fn)
    assert not (cache_path(tmp_path, **KEY) / "manifest.json").exists()


def test_float16_overflow_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="float16"):
        _cache(tmp_path, enc=lambda x: np.full((len(x), 2), 1e6, np.float32), dtype="float16")


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(dtype="int8"), "dtype"), (dict(verify="none"), "verify"), (dict(split=""), "split")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _cache(tmp_path, **kwargs)


def test_loading_a_large_entry_is_fast(tmp_path):
    n = 20_000  # 20k x 512 float32 = 40 MB, like CIFAR-10 test with a CLIP-sized embedding.
    src = ArraySource(np.zeros((n, 1, 1, 3), np.uint8), np.zeros(n, np.int64))
    enc = lambda x: np.ones((len(x), 512), np.float32)
    cached_embeddings(enc, src, cache_dir=tmp_path, batch_size=5000, progress=False, **KEY)
    start = time.perf_counter()
    hit = cached_embeddings(enc, src, cache_dir=tmp_path, batch_size=5000, progress=False, **KEY)
    assert hit.from_cache and time.perf_counter() - start < 1.0
