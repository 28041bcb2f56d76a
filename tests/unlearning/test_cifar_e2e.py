"""End to end on real data: the shipped CIFAR-10 sample embedded by the shipped ResNet-20.

2,000 train / 500 test images -> 64-d CIFAR ResNet-20 embeddings -> DKVB (32 codebooks x 128
keys) -> forget one class with UvA from the stored training histogram (no data pass).
"""

import jax
import numpy as np
import pytest
from unlearning_testutil import predictions

from dkvb_jax import DKVB, DKVBConfig, KeyInitConfig, ValueTrainConfig, fit_keys, train_values
from dkvb_jax.training import key_usage
from dkvb_jax.unlearning import accuracy_effect, every_class_metrics, forget_classes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar():
    data = pytest.importorskip("dkvb_jax.data")
    encoders = pytest.importorskip("dkvb_jax.encoders")
    try:
        train, test = data.load_cifar10_sample("train"), data.load_cifar10_sample("test")
    except FileNotFoundError as e:
        pytest.skip(f"shipped CIFAR-10 sample missing: {e}")
    enc = encoders.get_encoder("cifar_resnet20")
    b, bt = train.read(np.arange(len(train))), test.read(np.arange(len(test)))
    x, xt = enc.embed(b["image"]), enc.embed(bt["image"])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mu) / sd, (xt - mu) / sd
    y, yt = b["label"].astype(np.int32), bt["label"].astype(np.int32)

    cfg = DKVBConfig(embed_dim=64, num_classes=10, num_codebooks=32, num_keys=128, key_dim=8)
    model = DKVB(cfg)
    v = model.init(jax.random.key(0), x[:2])
    v, _ = fit_keys(
        model, v, x, key=jax.random.key(1), config=KeyInitConfig(epochs=3), progress=False
    )
    v, _ = train_values(
        model, v, x, y, key=jax.random.key(2), config=ValueTrainConfig(epochs=2), progress=False
    )
    return model, v, x, y, xt, yt, np.asarray(key_usage(model, v, x, y))


def test_forget_best_class_to_zero_retain_within_two_points(cifar):
    model, v, x, y, xt, yt, usage = cifar
    pred = predictions(model, v, xt)
    assert (pred == yt).mean() > 0.6  # a real model, not chance (10%)
    # The paper's protocol: forget the class the model learned best.
    per_class = np.array([(pred == yt)[yt == c].mean() for c in range(10)])
    cls = int(per_class.argmax())
    new, rec = forget_classes(
        model, v, cls, 128, usage=usage, eval_fn=accuracy_effect(model, xt, yt, [cls])
    )
    before, after = rec.effect["before"], rec.effect["after"]
    assert before["forget_accuracy"] > 0.8
    assert after["forget_accuracy"] == 0.0
    assert abs(after["retain_accuracy"] - before["retain_accuracy"]) < 0.02, rec.effect
    # Only masks changed: every other leaf is the trained model's, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, new["params"], v["params"])
    jax.tree.map(np.testing.assert_array_equal, new["frozen"], v["frozen"])


def test_every_class_at_once_in_one_vmap(cifar):
    model, v, x, y, xt, yt, usage = cifar
    pred = predictions(model, v, xt)
    base_retain = np.array([(pred == yt)[yt != c].mean() for c in range(10)])
    forget, retain = every_class_metrics(model, v, usage, 128, xt, yt)
    np.testing.assert_array_equal(forget, np.zeros(10))
    assert np.abs(retain - base_retain).max() < 0.02, retain - base_retain
