"""EMA k-means key initialisation."""

import jax
import numpy as np
import pytest

from dkvb_jax import DKVB, DKVBConfig, KeyInitConfig, fit_keys, quantisation_error
from dkvb_jax.testing import clustered_embeddings
from dkvb_jax.training import keys as keys_lib

CFG = DKVBConfig(embed_dim=16, num_classes=4, num_codebooks=4, num_keys=16, key_dim=4)


@pytest.fixture(scope="module")
def data():
    x, _ = clustered_embeddings(0, 1024, num_classes=4, clusters_per_class=4, dim=16)
    return x


@pytest.fixture(scope="module")
def init(data):
    model = DKVB(CFG)
    return model, model.init(jax.random.key(0), data[:2])


@pytest.mark.parametrize("seeding", ["random", "sample", "kmeans++"])
def test_lowers_quantisation_error_and_few_dead_keys(data, init, seeding):
    model, variables = init
    before = quantisation_error(model, variables, data)
    config = KeyInitConfig(epochs=4, batch_size=256, seeding=seeding)
    fitted, report = fit_keys(
        model, variables, data, key=jax.random.key(1), config=config, progress=False
    )
    after = quantisation_error(model, fitted, data)
    assert after < 0.5 * before
    assert report.quantisation_error[-1] <= report.quantisation_error[0] + 1e-6
    assert report.dead_fraction[-1] <= 0.1
    assert len(report.quantisation_error) == len(report.dead_fraction) == 4
    # Only the keys changed.
    np.testing.assert_array_equal(fitted["frozen"]["projection"], variables["frozen"]["projection"])
    assert fitted["params"] is variables["params"] and fitted["mask"] is variables["mask"]


def test_same_key_same_keys_and_batches_iterable(data, init):
    model, variables = init
    config = KeyInitConfig(epochs=2, batch_size=128)
    a, _ = fit_keys(model, variables, data, key=jax.random.key(3), config=config, progress=False)
    b, _ = fit_keys(model, variables, data, key=jax.random.key(3), config=config, progress=False)
    np.testing.assert_array_equal(a["frozen"]["keys"], b["frozen"]["keys"])
    c, _ = fit_keys(
        model,
        variables,
        lambda: iter(np.split(data, 8)),
        key=jax.random.key(3),
        config=config,
        progress=False,
    )
    assert np.isfinite(np.asarray(c["frozen"]["keys"])).all()


def test_reseeded_keys_keep_ema_state_consistent():
    # Two far-apart blobs but keys start on one: most keys are dead and must be re-seeded
    # with running sums that agree with the new keys (sums == keys * counts).
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.normal(size=(64, 2, 3)), rng.normal(size=(64, 2, 3)) + 50])
    keys = np.zeros((2, 8, 3), np.float32)
    counts = np.ones((2, 8), np.float32)
    state = keys_lib.EMAState(keys, keys * counts[..., None], counts)
    for i in range(5):
        state, _, _ = keys_lib._ema_step(
            state,
            q.astype(np.float32),
            np.ones(128, np.float32),
            jax.random.key(i),
            0.5,
            1e-5,
            0.05,
        )
    k, s, c = (np.asarray(a) for a in state)
    np.testing.assert_allclose(s / c[..., None], k, rtol=1e-4, atol=1e-4)
    assert (np.abs(k).max(axis=-1) > 25).any(), "no key moved to the second blob"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(decay=1.0), "decay"),
        (dict(seeding="farthest"), "seeding"),
        (dict(dead_threshold=-1.0), "dead_threshold"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeyInitConfig(**kwargs)


def test_empty_and_malformed_data(init):
    model, variables = init
    with pytest.raises(ValueError, match="empty"):
        fit_keys(model, variables, [], key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="embed_dim=16"):
        fit_keys(
            model, variables, np.zeros((10, 3), np.float32), key=jax.random.key(0), progress=False
        )
