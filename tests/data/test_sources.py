"""The source protocol, batching and the image rules, on in-memory arrays (ArraySource)."""

import numpy as np
import pytest

from dkvb_jax.data import ArraySource, Source, images


def _source(n=11, shape=(4, 5, 3), num_classes=3, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return ArraySource(imgs, np.arange(n) % num_classes, **kwargs), imgs


def test_satisfies_protocol_and_metadata():
    src, _ = _source(class_names=["a", "b", "c"])
    assert isinstance(src, Source)
    assert (len(src), src.num_classes, src.class_names) == (11, 3, ("a", "b", "c"))
    assert src.image_shape == (4, 5, 3)


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_match_the_arrays(drop_remainder, shuffle):
    src, imgs = _source()
    got = list(src.batches(4, shuffle=shuffle, seed=1, drop_remainder=drop_remainder))
    assert len(got) == (2 if drop_remainder else 3)
    for b in got:
        assert b["image"].dtype == np.uint8 and b["image"].shape == (4, 4, 5, 3)
        assert b["label"].dtype == np.int32 and b["id"].dtype == np.int64
        v = b["valid"]
        np.testing.assert_array_equal(b["image"][v], imgs[b["id"][v]])
        np.testing.assert_array_equal(b["label"][v], b["id"][v] % 3)
        # Padding rows: zero image, label 0, id -1.
        assert (b["image"][~v] == 0).all() and (b["label"][~v] == 0).all()
        assert (b["id"][~v] == -1).all()
    ids = np.concatenate([b["id"][b["valid"]] for b in got])
    if not drop_remainder:
        np.testing.assert_array_equal(np.sort(ids), np.arange(11))


def test_hosts_split_the_source():
    src, _ = _source(n=9)
    ids = [
        np.concatenate(
            [
                b["id"][b["valid"]]
                for b in src.batches(
                    2, shuffle=True, seed=5, drop_remainder=False, process_index=i, process_count=3
                )
            ]
        )
        for i in range(3)
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(9))
    assert src.num_batches(2, drop_remainder=False, process_index=0, process_count=3) == 2


def test_read_rejects_out_of_range():
    src, _ = _source()
    with pytest.raises(IndexError, match="out of range"):
        src.read([0, 11])


def test_all_padding_batch_uses_image_shape():
    src, _ = _source(n=1, shape=(3, 3, 3))
    b = src.read([-1, -1])
    assert b["image"].shape == (2, 3, 3, 3) and not b["valid"].any()


@pytest.mark.parametrize("channels", [None, 1, 4])
def test_non_rgb_arrays_convert_or_error(channels):
    shape = (4, 4) if channels is None else (4, 4, channels)
    src, imgs = _source(shape=shape)
    got = src.read([0])["image"][0]
    gray = imgs[0] if channels is None else imgs[0][..., 0]
    expected = imgs[0][..., :3] if channels == 4 else np.repeat(gray[..., None], 3, -1)
    np.testing.assert_array_equal(got, expected)
    strict, _ = _source(shape=shape, non_rgb="error")
    with pytest.raises(ValueError, match="non_rgb='convert'"):
        strict.read([0])


@pytest.mark.parametrize("size", [(4, 5), (8, 8), 6, (3, 7)])
def test_resize_covers_and_crops(size):
    src, _ = _source(image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert src.read([0, 1])["image"].shape == (2, h, w, 3)
    assert src.image_shape == (h, w, 3)


def test_resize_is_identity_at_target_and_keeps_solid_colour():
    solid = np.full((6, 10, 3), (10, 120, 250), np.uint8)
    np.testing.assert_array_equal(images.resize(solid, (6, 10)), solid)
    out = images.resize(solid, (4, 4))
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out, np.broadcast_to(solid[:4, :4], out.shape), atol=1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0])), ValueError, "labels"),
        (
            dict(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0.0, 1.0])),
            TypeError,
            "integers",
        ),
        (
            dict(
                images=np.zeros((2, 4, 4, 3), np.uint8),
                labels=np.array([0, 5]),
                class_names=["a", "b"],
            ),
            ValueError,
            r"\[0, 2\)",
        ),
        (dict(images=np.zeros((2, 4), np.uint8), labels=np.array([0, 1])), ValueError, "images"),
        (
            dict(images=np.zeros((2, 4, 4, 3), np.float32), labels=np.array([0, 1])),
            TypeError,
            "uint8",
        ),
        (
            dict(images=np.zeros((1, 4, 4, 3), np.uint8), labels=np.array([0]), non_rgb="x"),
            ValueError,
            "non_rgb",
        ),
        (
            dict(images=np.zeros((1, 4, 4, 3), np.uint8), labels=np.array([0]), image_size=(0, 3)),
            ValueError,
            "image_size",
        ),
    ],
)
def test_bad_input_is_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ArraySource(**kwargs).read([0])


def test_sources_are_grain_random_access_sources():
    grain = pytest.importorskip("grain")
    src, imgs = _source(n=10)
    ds = grain.MapDataset.source(src)[1::2].shuffle(seed=3).batch(2, drop_remainder=False)
    batches = list(ds)
    ids = np.concatenate([b["id"] for b in batches])
    np.testing.assert_array_equal(np.sort(ids), [1, 3, 5, 7, 9])
    for b in batches:
        np.testing.assert_array_equal(b["image"], imgs[b["id"]])
        assert b["label"].dtype == np.int32
    with pytest.raises(IndexError):
        src[10]
