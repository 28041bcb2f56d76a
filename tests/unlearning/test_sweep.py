"""Sweeps over N_a / N_e against a loop of real unlearning calls and full-model evaluation."""

import pytest
from unlearning_testutil import accuracy

from dkvb_jax.unlearning import (
    ForgetData,
    sweep,
    sweep_uva,
    sweep_uve,
    unlearn_via_activations,
    unlearn_via_examples,
)

NS = [1, 4, 16, 64]


# Small N evaluates from one shallow ranking; large N searches each variant directly.
@pytest.mark.parametrize("ns", [NS, [1, 2, 4, 8]])
@pytest.mark.parametrize("kind", ["uva", "uve"])
def test_sweep_matches_loop_and_finds_smallest_n(trained, kind, ns):
    t = trained
    cls = 3
    forget_x = t.x[t.y == cls]
    if kind == "uva":
        res = sweep_uva(t.model, t.v, t.usage, cls, t.xt, t.yt, ns)
        call = lambda n: unlearn_via_activations(t.model, t.v, n, usage=t.usage, classes=[cls])
    else:
        res = sweep_uve(t.model, t.v, forget_x, cls, t.xt, t.yt, ns)
        call = lambda n: unlearn_via_examples(t.model, t.v, forget_x, n_e=n)
    rows = t.yt == cls
    for n, f, r in zip(res.ns, res.forget_accuracy, res.retain_accuracy, strict=True):
        new, _ = call(n)
        assert f == pytest.approx(accuracy(t.model, new, t.xt, t.yt, rows)), n
        assert r == pytest.approx(accuracy(t.model, new, t.xt, t.yt, ~rows)), n
    assert res.baseline == (1.0, 1.0)
    hits = [n for n, f in zip(res.ns, res.forget_accuracy, strict=True) if f <= 0.0]
    assert res.smallest_n == (hits[0] if hits else None)
    assert res.forget_accuracy[0] > 0.5  # N=1 is not enough on this data: the sweep is needed
    assert [row["n"] for row in res.to_rows()] == ns
    if ns == NS:
        assert res.smallest_n is not None  # the largest N masks every key the class uses


def test_sweep_target_and_unreachable(trained):
    t = trained
    res = sweep_uva(t.model, t.v, t.usage, 1, t.xt, t.yt, [1, 2], target=0.0)
    assert res.smallest_n is None
    loose = sweep_uva(t.model, t.v, t.usage, 1, t.xt, t.yt, [1, 2], target=1.0)
    assert loose.smallest_n == 1


@pytest.mark.parametrize(
    "ns,match", [([], "empty"), ([0], r"in \[1, num_keys=64\]"), ([65], "out of range")]
)
def test_sweep_bad_ns(trained, ns, match):
    t = trained
    with pytest.raises(ValueError, match=match):
        sweep_uva(t.model, t.v, t.usage, 1, t.xt, t.yt, ns)


def test_clip_tries_a_size_above_the_request_at_the_largest_allowed(trained):
    """A grid shared by classes of different sizes: N_e above the class's rows tries them all."""
    t = trained
    forget_x = t.x[t.y == 3]
    data = ForgetData(classes=(3,), forget_x=forget_x)
    res = sweep("uve", t.model, t.v, data, t.xt, t.yt, [1, 10_000], clip=True)
    assert res.ns == [1, forget_x.shape[0]]
    data = ForgetData(classes=(3,), usage=t.usage)
    res = sweep("uva", t.model, t.v, data, t.xt, t.yt, [2, 1000], clip=True)
    assert res.ns == [2, t.model.config.num_keys]
