"""tfds sources on tfds.testing.mock_data (no files, no network, no TensorFlow)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dkvb_jax.data import TfdsSource, tensorflow_available


@pytest.fixture
def mock():
    with tfds.testing.mock_data(num_examples=9, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


@pytest.mark.parametrize(
    "name, split, num_classes",
    [
        ("cifar10", "train", 10),
        ("cifar10", "test", 10),
        ("cifar100", "train", 100),
        ("cifar100", "test", 100),
    ],
)
def test_cifar_without_tensorflow(mock, name, split, num_classes):
    src = TfdsSource(name, split, data_dir="/nonexistent/tfds")
    assert src.backend == "data_source"
    assert (len(src), src.num_classes, src.split) == (9, num_classes, split)
    batches = list(src.batches(4, drop_remainder=False, shuffle=True, seed=0))
    ids = np.concatenate([b["id"][b["valid"]] for b in batches])
    np.testing.assert_array_equal(np.sort(ids), np.arange(9))
    for b in batches:
        assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
        assert ((0 <= b["label"]) & (b["label"] < num_classes)).all()
    # Same example, same content, whichever way it is read.
    first = src.read([ids[0]])
    np.testing.assert_array_equal(first["image"][0], batches[0]["image"][0])


def test_cifar100_coarse_labels(mock):
    assert TfdsSource("cifar100", "test", label_key="coarse_label").num_classes == 20


def test_imagenet_test_means_validation_and_needs_a_size(mock):
    src = TfdsSource("imagenet2012", "test", manual_dir="/nonexistent/manual", image_size=16)
    assert src.split == "validation" and src.num_classes == 1000
    assert next(src.batches(3))["image"].shape == (3, 16, 16, 3)
    unsized = TfdsSource("imagenet2012", "test[:50%]")
    assert unsized.split == "validation[:50%]"
    with pytest.raises(ValueError, match="image_size"):
        unsized.read(np.arange(len(unsized)))  # Mock images have random sizes, like ImageNet.


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(name="no_such_dataset"), ValueError, "Unknown tfds dataset"),
        (dict(name="cifar10", backend="torch"), ValueError, "backend"),
        (dict(name="cifar10", split=0), TypeError, "split"),
        (dict(name="cifar10", label_key="fine"), ValueError, "no 'fine' feature"),
    ],
)
def test_bad_arguments(mock, kwargs, error, match):
    with pytest.raises(error, match=match):
        TfdsSource(**kwargs)


@pytest.mark.skipif(
    not tensorflow_available(),
    reason="needs tensorflow for tfds.load; the data_source path above covers tfds without it",
)
def test_tf_backend_matches_data_source(mock):
    tf_src = TfdsSource("cifar10", "train", backend="tf")
    assert tf_src.backend == "tf" and len(tf_src) == 9
    assert tf_src.read(np.arange(9))["image"].shape == (9, 32, 32, 3)


@pytest.mark.skipif(tensorflow_available(), reason="tensorflow is installed")
def test_tf_backend_without_tensorflow_says_what_to_install(mock):
    with pytest.raises(ImportError, match="tensorflow"):
        TfdsSource("cifar10", "train", backend="tf")
