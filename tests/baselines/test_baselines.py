"""Each baseline forgets on synthetic clustered data, keeps what it must, and rejects bad input."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dkvb_jax.baselines import (
    FineTuneConfig,
    NegGradConfig,
    NonFiniteLossError,
    OptimizerConfig,
    RetrainConfig,
    SCRUBConfig,
    StoppingConfig,
    UnlearningData,
    finetune,
    neggrad,
    params_initializer,
    retrain,
    scrub,
)
from dkvb_jax.baselines.scrub import scrub_losses
from dkvb_jax.baselines.trainer import TrainConfig, cross_entropy, distill_kl
from dkvb_jax.evaluation import CostRecord, evaluate_unlearning

DIM = 16  # matches conftest.DIM

NO_PLATEAU = StoppingConfig(max_epochs=10, patience=None)
# Settings scaled to 160 examples (the published ones assume thousands of steps per epoch).
CASES = {
    "finetune": (
        finetune,
        FineTuneConfig(
            batch_size=16,
            optimizer=OptimizerConfig(learning_rate=0.1, weight_decay=0.05),
            stopping=NO_PLATEAU,
            progress=False,
        ),
    ),
    "neggrad+": (
        neggrad,
        NegGradConfig(
            alpha=0.9,
            batch_size=16,
            forget_batch_size=16,
            optimizer=OptimizerConfig(learning_rate=0.05),
            stopping=NO_PLATEAU,
            progress=False,
        ),
    ),
    "scrub": (
        scrub,
        SCRUBConfig(
            batch_size=16,
            forget_batch_size=8,
            optimizer=OptimizerConfig(name="adam", learning_rate=0.01),
            stopping=NO_PLATEAU,
            progress=False,
        ),
    ),
}


@pytest.fixture(scope="module")
def runs(problem):
    head, variables, data = problem
    return {
        name: fn(head.apply, variables, data, cfg, key=jax.random.key(2))
        for name, (fn, cfg) in CASES.items()
    }


@pytest.mark.parametrize("name", list(CASES))
def test_forgets_and_keeps_retain(problem, runs, name):
    head, variables, data = problem
    before = evaluate_unlearning(head.apply, variables, data)
    new_vars, cost, traj = runs[name]
    after = evaluate_unlearning(head.apply, new_vars, data)
    assert after["forget_train"] < before["forget_train"] - 0.2, (before, after)
    assert after["forget_test"] < before["forget_test"] - 0.2, (before, after)
    assert after["retain_test"] > before["retain_test"] - 0.05, (before, after)
    # The trajectory ends at the stopping point and matches the cost record.
    assert traj.forget_acc[-1] == pytest.approx(after["forget_train"], abs=1e-6)
    assert traj.stop_epoch == len(traj.epoch) - 1 == cost.extra["epochs"]
    assert isinstance(cost, CostRecord) and cost.forward_flops > 0 and cost.backward_flops > 0
    assert cost.num_backward_calls == cost.num_forward_calls > 0


def test_finetune_counts_one_call_per_batch(problem, runs):
    _, _, data = problem
    _, cost, traj = runs["finetune"]
    batches = -(-data.retain_x.shape[0] // CASES["finetune"][1].batch_size)
    assert cost.num_forward_calls == batches * traj.stop_epoch


def test_stops_at_target(runs):
    _, _, traj = runs["finetune"]
    assert traj.stop_reason == "target" and traj.forget_acc[-1] == 0.0
    assert all(a > 0 for a in traj.forget_acc[:-1])


def test_other_collections_untouched(problem):
    head, variables, data = problem
    shift = {"shift": jnp.full((DIM,), 0.01)}

    def apply_fn(v, x):
        return head.apply({"params": v["params"]}, x + v["frozen"]["shift"])

    v = {"params": variables["params"], "frozen": shift}
    fn, cfg = CASES["scrub"]
    new_vars, _, _ = fn(
        apply_fn,
        v,
        data,
        dataclasses.replace(cfg, stopping=StoppingConfig(max_epochs=1)),
        key=jax.random.key(0),
    )
    assert new_vars["frozen"] is shift
    assert set(new_vars) == {"params", "frozen"}
    diff = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), new_vars["params"], variables["params"]
    )
    assert max(jax.tree.leaves(diff)) > 0


def test_scrub_max_step_increases_forget_kl(problem):
    head, variables, data = problem
    cfg = CASES["scrub"][1]
    max_loss, _ = scrub_losses(head.apply, cfg)
    teacher = variables["params"]
    # Start slightly off the teacher: at student == teacher the KL has zero gradient.
    student = jax.tree.map(
        lambda p: p + 1e-3 * jax.random.normal(jax.random.key(3), p.shape), teacher
    )
    opt = optax.adam(1e-2)
    state = opt.init(student)
    batch = (data.forget_x, data.forget_y, jnp.ones(data.forget_x.shape[0]))
    context = ({}, teacher)
    kls = []
    for _ in range(5):
        (_, kl), grads = jax.value_and_grad(max_loss, has_aux=True)(student, context, batch)
        kls.append(float(kl))
        updates, state = opt.update(grads, state, student)
        student = optax.apply_updates(student, updates)
    assert all(b > a for a, b in zip(kls, kls[1:], strict=False)), kls


def test_scrub_forget_kl_exceeds_retain_kl(problem, runs):
    head, variables, data = problem
    new_vars, _, _ = runs["scrub"]

    def kl(x):
        return float(
            distill_kl(head.apply(new_vars, x), head.apply(variables, x), 2.0, jnp.ones(x.shape[0]))
        )

    assert kl(data.forget_x) > 5 * kl(data.retain_x)


def test_scrub_rewind_needs_validation_and_picks_an_epoch(problem):
    head, variables, data = problem
    cfg = dataclasses.replace(CASES["scrub"][1], rewind=True, stopping=StoppingConfig(max_epochs=3))
    with pytest.raises(ValueError, match="val_forget"):
        scrub(
            head.apply,
            variables,
            data._replace(val_forget_x=None, val_forget_y=None),
            cfg,
            key=jax.random.key(0),
        )
    _, cost, traj = scrub(head.apply, variables, data, cfg, key=jax.random.key(0))
    assert 0 <= cost.extra["rewound_to_epoch"] <= traj.stop_epoch


RETRAIN = RetrainConfig(epochs=5, batch_size=32, progress=False)


def test_retrain_never_reads_forget_data(problem):
    head, variables, data = problem
    cfg = dataclasses.replace(RETRAIN, init_fn=params_initializer(head, DIM))
    real, _, _ = retrain(head.apply, variables, data, cfg, key=jax.random.key(4))
    poisoned = data._replace(
        forget_x=jnp.full_like(data.forget_x, jnp.nan), forget_y=-jnp.ones_like(data.forget_y)
    )
    nan_run, cost, traj = retrain(head.apply, variables, poisoned, cfg, key=jax.random.key(4))
    chex.assert_trees_all_equal(real, nan_run)
    chex.assert_tree_all_finite(nan_run)
    assert all(a is None for a in traj.forget_acc) and np.isfinite(cost.total_flops)
    # And it forgets: the forget class was never trained.
    assert evaluate_unlearning(head.apply, nan_run, data)["forget_test"] < 0.05


def test_retrain_requires_matching_init_fn(problem):
    head, variables, data = problem
    with pytest.raises(ValueError, match="init_fn is required"):
        retrain(head.apply, variables, data, RETRAIN, key=jax.random.key(0))
    bad = dataclasses.replace(RETRAIN, init_fn=lambda key: {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="different structure"):
        retrain(head.apply, variables, data, bad, key=jax.random.key(0))


EMPTY = jnp.zeros((0, DIM), jnp.float32), jnp.zeros((0,), jnp.int32)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d._replace(retain_x=EMPTY[0], retain_y=EMPTY[1]), "retain set .* empty"),
        (lambda d: d._replace(forget_x=EMPTY[0], forget_y=EMPTY[1]), "forget set .* empty"),
        (lambda d: d._replace(forget_y=d.forget_y + 7), "label space mismatch"),
        (lambda d: d._replace(retain_y=d.retain_y[:-1]), r"y must be \[n\] labels"),
        (lambda d: d._replace(val_forget_y=None), "both be given"),
    ],
)
def test_bad_input_raises(problem, name, edit, match):
    head, variables, data = problem
    fn, cfg = CASES[name]
    with pytest.raises(ValueError, match=match):
        fn(head.apply, variables, edit(data), cfg, key=jax.random.key(0))


def test_not_unlearning_data_raises(problem):
    head, variables, data = problem
    with pytest.raises(TypeError, match="UnlearningData"):
        finetune(head.apply, variables, tuple(data), CASES["finetune"][1], key=jax.random.key(0))


def test_nan_loss_stops_with_clear_error(problem):
    head, variables, data = problem
    poisoned = data._replace(retain_x=data.retain_x.at[3, 0].set(jnp.nan))
    fn, cfg = CASES["neggrad+"]
    with pytest.raises(NonFiniteLossError, match="NaN/inf in epoch 1"):
        fn(head.apply, variables, poisoned, cfg, key=jax.random.key(0))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NegGradConfig(alpha=1.0), "alpha"),
        (lambda: SCRUBConfig(temperature=0.0), "temperature"),
        (lambda: FineTuneConfig(batch_size=0), "batch_size"),
        (lambda: OptimizerConfig(name="rmsprop"), "name"),
        (lambda: StoppingConfig(max_epochs=0), "max_epochs"),
        (lambda: StoppingConfig(forget_target=2.0), "forget_target"),
        (lambda: RetrainConfig(epochs=0), "RetrainConfig.epochs"),
        (lambda: RetrainConfig(batch_size=0), "RetrainConfig.batch_size"),
    ],
)
def test_config_validation_names_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_retrain_config_is_a_train_config_with_an_initialiser():
    assert [f.name for f in dataclasses.fields(RetrainConfig)] == [
        *(f.name for f in dataclasses.fields(TrainConfig)),
        "init_fn",
    ]
    assert RetrainConfig(epochs=3).optimizer == TrainConfig().optimizer
    assert RetrainConfig().progress and not TrainConfig().progress


class LossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_losses_match_numpy(self):
        rng = np.random.default_rng(0)
        s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
        y, w = rng.integers(0, 5, 6), np.array([1, 1, 1, 1, 0, 0], np.float32)

        def log_softmax(z):
            z = z - z.max(-1, keepdims=True)
            return z - np.log(np.exp(z).sum(-1, keepdims=True))

        ce = -log_softmax(s)[np.arange(6), y]
        expected_ce = (w * ce).sum() / w.sum()
        temp = 2.0
        lt, ls = log_softmax(t / temp), log_softmax(s / temp)
        expected_kl = (w * (np.exp(lt) * (lt - ls)).sum(-1)).sum() / w.sum() * temp**2
        got_ce = self.variant(cross_entropy)(s, y, w)
        got_kl = self.variant(distill_kl, static_argnums=2)(s, t, temp, w)
        np.testing.assert_allclose(got_ce, expected_ce, rtol=1e-5)
        np.testing.assert_allclose(got_kl, expected_kl, rtol=1e-5)


def test_unlearning_data_is_a_pytree(problem):
    _, _, data = problem
    assert isinstance(jax.tree.map(lambda a: a, data), UnlearningData)
