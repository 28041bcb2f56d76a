"""The MIA is at chance for an unseen forget set and well above it for a memorised one."""

import jax.numpy as jnp
import numpy as np
import pytest

from dkvb_jax.evaluation import MIAResult, membership_inference, mia_attack
from dkvb_jax.evaluation.mia import within_noise

DIM, N = 32, 60


def kernel_apply(variables, x):
    """A memorising classifier: Gaussian-kernel votes of stored examples (bandwidth 1).

    Stored points get a confident, correct prediction; anything else gets a near-uniform one.
    That is the extreme of overfitting, built directly rather than trained.
    """
    memory, onehot = variables["params"]["memory"], variables["params"]["onehot"]
    d2 = jnp.sum((x[:, None, :] - memory[None]) ** 2, axis=-1)
    return 10.0 * jnp.exp(-d2 / 2.0) @ onehot


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, DIM))

    def sample():
        y = np.repeat(np.arange(3), N)
        return (centers[y] + rng.normal(size=(y.size, DIM))).astype(np.float32), y.astype(np.int32)

    (x, y), (xt, yt) = sample(), sample()

    def memorise(x, y):
        return {"params": {"memory": jnp.asarray(x), "onehot": jnp.eye(3)[y]}}

    keep = y != 0
    forget = (x[~keep], y[~keep], xt[yt == 0], yt[yt == 0])
    return memorise(x, y), memorise(x[keep], y[keep]), forget


def test_mia_high_for_memorised_forget_set(models):
    overfit, _, forget = models
    result = membership_inference(kernel_apply, overfit, *forget, seed=0)
    assert result.accuracy > 0.7, result


def test_mia_near_chance_when_forget_set_unseen(models):
    _, unseen, forget = models
    result = membership_inference(kernel_apply, unseen, *forget, seed=0)
    assert abs(result.accuracy - 0.5) < 0.15, result


def test_mia_balances_and_is_seeded():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.exponential(size=200), rng.exponential(size=50)
    a = mia_attack(members, nonmembers, seed=3)
    assert a.n_per_side == 50 and a == mia_attack(members, nonmembers, seed=3)
    separated = mia_attack(rng.uniform(0, 1, 40), rng.uniform(2, 3, 40), seed=0)
    assert separated.accuracy == 1.0


@pytest.mark.parametrize(
    "members, nonmembers, kwargs, match",
    [
        ([0.1, np.nan, 0.3, 0.4, 0.5], [1.0] * 5, {}, "NaN/inf"),
        ([0.1, 0.2], [1.0] * 5, {}, "at least 5"),
        ([0.1] * 5, [1.0] * 5, {"n_splits": 1}, "n_splits"),
    ],
)
def test_mia_bad_input(members, nonmembers, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mia_attack(np.asarray(members), np.asarray(nonmembers), **kwargs)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0.61, 0.05), (0.57, 0.04), True),  # 4 points apart, combined spread 6.4
        ((0.61, 0.03), (0.57, 0.0), False),  # 4 points apart, combined spread 3
        ((0.50, 0.0), (0.50, 0.0), True),
    ],
)
def test_within_noise_compares_the_change_with_the_combined_fold_spread(a, b, expected):
    ra, rb = MIAResult(*a, 50, 5), MIAResult(*b, 50, 5)
    assert within_noise(ra, rb) is expected is within_noise(rb, ra)
    assert MIAResult.from_dict(ra.to_dict()) == ra
