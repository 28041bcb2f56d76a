"""Every data pass on a device mesh against the one-device result, on 8 forced CPU devices.

The passes are the library's own (`mesh=None` or a mesh); properties that must hold either way
are parametrised over both.
"""

import jax

if jax.device_count() < 8:  # conftest.py forces 8 CPU devices; keep the module runnable alone.
    jax.config.update("jax_num_cpu_devices", 8)

import chex  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _tiny import CONFIG, KEYS, VALUES, tiny_problem  # noqa: E402

from dkvb_jax import parallel, training  # noqa: E402
from dkvb_jax.model import DKVB  # noqa: E402
from dkvb_jax.parallel import distributed  # noqa: E402
from dkvb_jax.training import keys as keys_lib  # noqa: E402

MESHES = {
    "data8": lambda: parallel.data_mesh(8),
    "data4xcodebook2": lambda: parallel.data_codebook_mesh(4, 2),
}
# For properties that hold with or without a mesh.
ONE_OR_EIGHT = {"one-device": lambda: None, "data8": MESHES["data8"]}


@pytest.fixture(scope="module")
def problem():
    return tiny_problem()


@pytest.fixture(scope="module", params=list(MESHES))
def mesh(request):
    return MESHES[request.param]()


@pytest.fixture(params=list(ONE_OR_EIGHT))
def any_mesh(request):
    return ONE_OR_EIGHT[request.param]()


def _placed(variables, mesh):
    return parallel.place_variables(variables, mesh)


def test_codes_identical(problem, mesh):
    model, variables, x, _ = problem
    want = training.compute_codes(model, variables, x)
    got = training.compute_codes(model, _placed(variables, mesh), x, batch_size=4, mesh=mesh)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("per_class", [False, True])
def test_key_usage_identical(problem, mesh, per_class):
    model, variables, x, y = problem
    labels = y if per_class else None
    want = training.key_usage(model, variables, x, labels)
    got = training.key_usage(model, _placed(variables, mesh), x, labels, batch_size=4, mesh=mesh)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_key_usage_identical_on_an_odd_device_count(problem):
    model, variables, x, y = problem
    want = training.key_usage(model, variables, x, y)
    got = training.key_usage(model, variables, x, y, batch_size=4, mesh=parallel.data_mesh(3))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_key_usage_valid_rows_equal_subset(problem, any_mesh):
    model, variables, x, y = problem
    keep = np.arange(len(x)) % 3 != 0
    masked = training.key_usage(model, variables, x, y, mesh=any_mesh, valid=keep)
    subset = training.key_usage(model, variables, x[keep], y[keep])
    np.testing.assert_array_equal(np.asarray(masked), np.asarray(subset))


@pytest.mark.parametrize("n, jit", [(1, False), (7, False), (9, True), (16, False)])
def test_usage_from_codes_matches_brute_force(n, any_mesh, jit):
    rng = np.random.default_rng(n)
    c, k, top_k, classes = 3, 5, 2, 4
    idx = rng.integers(0, k, (n, c, top_k)).astype(np.int32)
    valid = rng.random((n, c, top_k)) < 0.8
    labels = rng.integers(0, classes, n).astype(np.int32)
    rows = rng.random(n) < 0.7
    want = np.zeros((classes, c, k), np.int64)
    for i, cb, t in np.ndindex(n, c, top_k):
        if valid[i, cb, t] and rows[i]:
            want[labels[i], cb, idx[i, cb, t]] += 1
    fn = training.usage_from_codes
    if jit:
        fn = jax.jit(fn, static_argnames=("num_keys", "num_classes", "mesh"))
    kwargs = dict(num_keys=k, labels=labels, num_classes=classes, weights=rows, mesh=any_mesh)
    got = fn(idx, valid, **kwargs)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("batch_size", [3, 64])
@pytest.mark.parametrize("mesh_name", ["one-device", *MESHES])
def test_evaluate_matches_model_apply(problem, mesh_name, batch_size):
    model, variables, x, y = problem
    mesh = ONE_OR_EIGHT["one-device"]() if mesh_name == "one-device" else MESHES[mesh_name]()
    placed = variables if mesh is None else _placed(variables, mesh)
    result = training.evaluate(model, placed, x, y, mesh=mesh, batch_size=batch_size)
    logits = model.apply(variables, jnp.asarray(x))
    assert result.count == len(x)
    assert result.logits.shape == logits.shape
    np.testing.assert_allclose(np.asarray(result.logits), np.asarray(logits), atol=1e-6)
    assert result.correct == int(np.sum(np.asarray(logits).argmax(-1) == y))
    assert result.accuracy == pytest.approx(result.correct / len(x))


def test_evaluate_valid_rows_equal_subset(problem, any_mesh):
    model, variables, x, y = problem
    keep = np.arange(len(x)) % 3 != 0
    masked = training.evaluate(model, variables, x, y, mesh=any_mesh, valid=keep, batch_size=2)
    subset = training.evaluate(model, variables, x[keep], y[keep], mesh=any_mesh, batch_size=2)
    assert (masked.correct, masked.count) == (subset.correct, subset.count)


def test_unlearned_variables_identical(problem):
    unlearning = pytest.importorskip("dkvb_jax.unlearning")
    model, variables, x, y = problem
    one = training.key_usage(model, variables, x, y)
    many = training.key_usage(model, variables, x, y, mesh=parallel.data_mesh(8))
    want, _ = unlearning.unlearn_via_activations(model, variables, 2, usage=one, classes=[0])
    got, _ = unlearning.unlearn_via_activations(model, variables, 2, usage=many, classes=[0])
    chex.assert_trees_all_equal(got, want)


def test_pmap_lookup_and_unlearning_match(problem):
    """User code that wraps the lookup and the UvA selection in `jax.pmap` gets the same result."""
    unlearning = pytest.importorskip("dkvb_jax.unlearning")
    model, variables, x, y = problem
    n = 8 * (len(x) // 8)
    xs = jnp.asarray(x[:n]).reshape(8, -1, x.shape[1])

    def per_device(v, xb):
        idx, valid = model.apply(v, xb, method=DKVB.codes)
        usage = unlearning.selection.psum_usage(idx, valid, CONFIG.num_keys, "d")
        return idx, unlearning.apply_selection(v, unlearning.mask_top_n(usage, 2))

    idx, unlearned = jax.pmap(per_device, axis_name="d", in_axes=(None, 0))(variables, xs)
    want_idx, _ = training.compute_codes(model, variables, x[:n])
    np.testing.assert_array_equal(np.asarray(idx).reshape(want_idx.shape), np.asarray(want_idx))
    want, _ = unlearning.unlearn_via_activations(
        model, variables, 2, forget_x=x[:n], count_with_masks=True
    )
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[0], unlearned), want)


def test_ema_statistics_summed_over_devices(problem):
    model, variables, x, _ = problem
    mesh = parallel.data_mesh(8)
    q = model.apply(variables, jnp.asarray(x), method=DKVB.queries)  # 53 rows: ragged over 8
    w = jnp.asarray(np.random.default_rng(1).random(len(x)), jnp.float32)
    keys = variables["frozen"]["keys"]
    want = keys_lib._batch_stats(q, w, keys)
    got = keys_lib._batch_stats(q, w, keys, mesh)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    state = keys_lib.EMAState(keys, keys * 0.5, jnp.full(keys.shape[:2], 0.5))
    rng = jax.random.key(3)
    want_step = keys_lib._ema_step(state, q, w, rng, 0.9, 1e-5, 0.05)
    got_step = keys_lib._ema_step(state, q, w, rng, 0.9, 1e-5, 0.05, mesh)
    chex.assert_trees_all_close(got_step, want_step, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("splitter", ["random_projection", "learned"])
def test_value_training_matches_single_device(splitter):
    config = CONFIG.replace(
        splitter=splitter, decoder="linear" if splitter == "learned" else "vote"
    )
    model, variables, x, y = tiny_problem(config=config)
    cfg = training.ValueTrainConfig(epochs=2, batch_size=16, learning_rate=0.5)
    kwargs = dict(key=jax.random.key(7), config=cfg, eval_data=(x[:20], y[:20]), progress=False)
    want, hist = training.train_values(model, variables, x, y, **kwargs)
    got, phist = training.train_values(model, variables, x, y, mesh=parallel.data_mesh(8), **kwargs)
    chex.assert_trees_all_close(got["params"], want["params"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(phist.loss, hist.loss, rtol=1e-5)
    np.testing.assert_allclose(phist.accuracy, hist.accuracy)
    assert len(phist.eval_accuracy) == cfg.epochs
    np.testing.assert_allclose(phist.eval_accuracy, hist.eval_accuracy)


def test_value_training_refuses_uneven_batches(problem):
    model, variables, x, y = problem
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
        training.train_values(
            model,
            variables,
            x,
            y,
            key=jax.random.key(0),
            mesh=parallel.data_mesh(8),
            config=training.ValueTrainConfig(batch_size=12),
            progress=False,
        )


@pytest.mark.parametrize("seeding", ["sample", "kmeans++"])
def test_fit_keys_matches_single_device(seeding):
    model, variables, x, _ = tiny_problem(n=64)
    # dead_threshold 0.5 makes re-seeding happen, so the test covers the random draws too.
    cfg = training.KeyInitConfig(epochs=2, batch_size=16, seeding=seeding, dead_threshold=0.5)
    kwargs = dict(key=jax.random.key(4), config=cfg, progress=False)
    want, want_report = training.fit_keys(model, variables, x, **kwargs)
    got, report = training.fit_keys(model, variables, x, mesh=parallel.data_mesh(8), **kwargs)
    chex.assert_trees_all_close(got, want, atol=1e-5)
    np.testing.assert_allclose(report.quantisation_error, want_report.quantisation_error, rtol=1e-5)
    assert report.dead_fraction == want_report.dead_fraction


def _train_values(model, variables, x, y, **kwargs):
    return training.train_values(
        model, variables, x, y, key=jax.random.key(7), config=VALUES, progress=False, **kwargs
    )


def _fit_keys(model, variables, x, y, **kwargs):
    """Key fitting (labels unused)."""
    return training.fit_keys(
        model, variables, x, key=jax.random.key(4), config=KEYS, progress=False, **kwargs
    )


def _key_usage(model, variables, x, y, **kwargs):
    return training.key_usage(model, variables, x, y, **kwargs), None


def _evaluate(model, variables, x, y, **kwargs):
    result = training.evaluate(model, variables, x, y, **kwargs)
    return (result.correct, result.count), None


PASSES = [_train_values, _fit_keys, _key_usage, _evaluate]
PASS_IDS = ["train_values", "fit_keys", "key_usage", "evaluate"]


@pytest.mark.parametrize("fit", PASSES, ids=PASS_IDS)
def test_global_batch_padding_is_never_used(fit, any_mesh):
    model, variables, x, y = tiny_problem()
    gx, valid, gy = distributed.global_batch(x, parallel.data_mesh(8), labels=y)
    assert gx.shape[0] > len(x)  # 53 rows padded to 56 with copies of example 0
    want, _ = fit(model, variables, x, y)
    got, _ = fit(model, variables, gx, gy, mesh=any_mesh, valid=valid)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    # The padding rows do change the result when not masked, so the check above has teeth.
    unmasked, _ = fit(model, variables, gx, gy, mesh=any_mesh)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(unmasked, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fit", PASSES, ids=PASS_IDS)
@pytest.mark.parametrize(
    "valid, error, match",
    [
        (np.ones(53, np.int32), TypeError, "bool"),
        (np.ones(52, bool), ValueError, "shape"),
    ],
)
def test_bad_valid_rows(problem, fit, any_mesh, valid, error, match):
    model, variables, x, y = problem
    with pytest.raises(error, match=match):
        fit(model, variables, x, y, mesh=any_mesh, valid=valid)


@pytest.mark.parametrize("fit", [_train_values, _fit_keys], ids=["train_values", "fit_keys"])
def test_training_on_no_valid_row_is_refused(problem, fit, any_mesh):
    model, variables, x, y = problem
    with pytest.raises(ValueError, match="no row"):
        fit(model, variables, x, y, mesh=any_mesh, valid=np.zeros(53, bool))


def test_fit_keys_valid_needs_an_array(problem, any_mesh):
    model, variables, x, y = problem
    with pytest.raises(TypeError, match="valid marks the rows of an array"):
        _fit_keys(model, variables, [x[:24], x[24:]], y, mesh=any_mesh, valid=np.ones(53, bool))
