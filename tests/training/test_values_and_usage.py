"""Value training and key-usage counting."""

import chex
import jax
import numpy as np
import pytest

from dkvb_jax import (
    DKVB,
    DKVBConfig,
    KeyInitConfig,
    ValueTrainConfig,
    compute_codes,
    fit_keys,
    key_usage,
    train_values,
    usage_from_codes,
)
from dkvb_jax.testing import clustered_embeddings

CFG = DKVBConfig(embed_dim=16, num_classes=4, num_codebooks=8, num_keys=32, key_dim=4)


@pytest.fixture(scope="module")
def fitted():
    x, y = clustered_embeddings(0, 1200, num_classes=4, clusters_per_class=2, dim=16)
    xt, yt = clustered_embeddings(1, 400, num_classes=4, clusters_per_class=2, dim=16)
    model = DKVB(CFG)
    variables = model.init(jax.random.key(0), x[:2])
    variables, _ = fit_keys(
        model, variables, x, key=jax.random.key(1), config=KeyInitConfig(epochs=3), progress=False
    )
    return model, variables, (x, y), (xt, yt)


FAST = ValueTrainConfig(epochs=3, batch_size=128)


@pytest.mark.parametrize(
    "changes, config",
    [
        ({}, FAST),
        ({"top_k": 2}, FAST),
        (
            {"decoder": "linear"},
            ValueTrainConfig(epochs=3, batch_size=128, optimizer="adam", learning_rate=0.01),
        ),
        (
            {},
            ValueTrainConfig(
                epochs=3, batch_size=100, optimizer="adam", learning_rate=0.05, schedule="cosine"
            ),
        ),
    ],
)
def test_reaches_high_accuracy_on_separable_data(fitted, changes, config):
    _, variables, (x, y), (xt, yt) = fitted
    model = DKVB(CFG.replace(**changes))
    if changes.get("decoder") == "linear":
        variables = {**variables, "params": model.init(jax.random.key(0), x[:2])["params"]}
    trained, history = train_values(
        model,
        variables,
        x,
        y,
        key=jax.random.key(2),
        config=config,
        eval_data=(xt, yt),
        progress=False,
    )
    assert history.eval_accuracy[-1] > 0.95
    assert len(history.loss) == config.epochs and np.isfinite(history.loss).all()
    # Keys, projection and masks are untouched.
    chex.assert_trees_all_equal(trained["frozen"], variables["frozen"])
    chex.assert_trees_all_equal(trained["mask"], variables["mask"])


def test_deterministic_given_key(fitted):
    model, variables, (x, y), _ = fitted
    runs = [
        train_values(model, variables, x, y, key=jax.random.key(k), config=FAST, progress=False)[0][
            "params"
        ]
        for k in (5, 5, 6)
    ]
    chex.assert_trees_all_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0]["values"], runs[2]["values"])


def test_ragged_last_batch_uses_every_example(fitted):
    model, variables, (x, y), _ = fitted
    # 5 examples, batch 4: the fifth must still train its pairs.
    trained, _ = train_values(
        model,
        variables,
        x[:5],
        y[:5],
        key=jax.random.key(0),
        config=ValueTrainConfig(epochs=1, batch_size=4),
        progress=False,
    )
    idx, _ = compute_codes(model, variables, x[4:5])
    changed = np.asarray(trained["params"]["values"] != variables["params"]["values"]).any(-1)
    assert changed[np.arange(8), np.asarray(idx)[0, :, 0]].all()


@pytest.mark.parametrize(
    "y, match",
    [
        (np.full(1200, 4, np.int32), r"\[0, 4\)"),
        (np.zeros(1200, np.float32), "integer"),
        (np.zeros(10, np.int32), "1200 embeddings"),
    ],
)
def test_bad_labels(fitted, y, match):
    model, variables, (x, _), _ = fitted
    with pytest.raises((ValueError, TypeError), match=match):
        train_values(model, variables, x, y, key=jax.random.key(0), config=FAST, progress=False)


def brute_force_usage(idx, valid, labels, num_classes, num_keys):
    out = np.zeros((num_classes, idx.shape[1], num_keys), np.int64)
    for n, c, k in zip(*np.nonzero(valid), strict=True):
        out[labels[n], c, idx[n, c, k]] += 1
    return out


@pytest.mark.parametrize("top_k", [1, 3])
def test_usage_matches_brute_force(fitted, top_k):
    _, variables, (x, y), _ = fitted
    model = DKVB(CFG.replace(top_k=top_k))
    search = np.zeros((8, 32), bool)
    search[0, :30] = True  # codebook 0 keeps two active keys: top-3 has an invalid slot
    variables = {**variables, "mask": {**variables["mask"], "search": search}}
    per_class = key_usage(model, variables, x[:300], y[:300], batch_size=64)
    idx, valid = compute_codes(model, variables, x[:300])
    ref = brute_force_usage(np.asarray(idx), np.asarray(valid), y[:300], 4, 32)
    np.testing.assert_array_equal(per_class, ref)
    np.testing.assert_array_equal(key_usage(model, variables, x[:300]), ref.sum(0))
    assert not np.asarray(per_class)[:, 0, :30].any()


def test_usage_from_codes_is_jittable_and_respects_weights(fitted):
    model, variables, (x, y), _ = fitted
    idx, valid = compute_codes(model, variables, x[:50])
    w = np.arange(50) < 20
    f = jax.jit(usage_from_codes, static_argnums=(2, 4))
    full = f(idx[:20], valid[:20], 32, y[:20], 4)
    np.testing.assert_array_equal(f(idx, valid, 32, y[:50], 4, w), full)
    with pytest.raises(ValueError, match="num_classes"):
        usage_from_codes(idx, valid, 32, y[:50])
