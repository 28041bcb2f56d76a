"""FLOPs come from XLA and match analytic counts; the cost record adds up."""

import jax
import jax.numpy as jnp
import pytest

from dkvb_jax.evaluation import CostRecord, compile_with_flops, flops_of, forward_cost, step_flops


@pytest.mark.parametrize("m, k, n", [(8, 16, 4), (32, 64, 10), (1, 128, 3)])
def test_matmul_flops_are_2mkn(m, k, n):
    _, flops = compile_with_flops(jnp.matmul, jnp.ones((m, k)), jnp.ones((k, n)))
    assert flops == 2 * m * k * n


class _Fake:
    def __init__(self, analysis):
        self.analysis = analysis

    def cost_analysis(self):
        return self.analysis


@pytest.mark.parametrize(
    "analysis, expected", [({"flops": 10.0}, 10.0), ([{"flops": 4.0}, {"flops": 6.0}], 10.0)]
)
def test_flops_of_accepts_dict_and_list(analysis, expected):
    assert flops_of(_Fake(analysis)) == expected


@pytest.mark.parametrize(
    "analysis, match", [(None, "no cost analysis"), ({"bytes": 1.0}, "no 'flops'")]
)
def test_flops_of_missing_raises(analysis, match):
    with pytest.raises(ValueError, match=match):
        flops_of(_Fake(analysis))


@pytest.mark.parametrize("batch, dim, classes", [(64, 128, 10), (256, 64, 32)])
def test_linear_layer_grad_about_twice_forward(batch, dim, classes):
    w = jnp.zeros((dim, classes))
    x = jnp.ones((batch, dim))

    def loss(w, x):
        return jnp.mean(x @ w), None

    def step(w, x):
        # Returns the loss too, as a training step does; otherwise XLA drops the forward pass.
        (value, _), g = jax.value_and_grad(loss, has_aux=True)(w, x)
        return w - 0.1 * g, value

    _, per_call = step_flops(loss, step, (w, x), (w, x))
    matmul = 2 * batch * dim * classes
    assert per_call["forward"] == pytest.approx(matmul, rel=0.05)
    # The weight gradient x^T @ g is one more matmul of the same size: value_and_grad ~ 2x forward.
    assert (per_call["forward"] + per_call["backward"]) / per_call["forward"] == pytest.approx(
        2.0, rel=0.1
    )
    assert per_call["optimizer"] == pytest.approx(2 * dim * classes, rel=0.5)


def test_cost_record_adds_calls_and_round_trips():
    rec = CostRecord("m").add_calls(
        {"forward": 10.0, "backward": 20.0, "optimizer": 1.0}, 3, backward=True, wall_s=0.5
    )
    rec = rec.add_calls({"forward": 5.0}, 2, backward=False)
    assert (
        rec.forward_flops,
        rec.backward_flops,
        rec.num_forward_calls,
        rec.num_backward_calls,
    ) == (40, 60, 5, 3)
    assert rec.total_flops == 40 + 60 + 3
    assert CostRecord.from_dict(rec.to_dict()) == rec


@pytest.mark.parametrize("field", ["wall_s", "forward_flops", "backward_flops"])
@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_cost_record_rejects_bad_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        CostRecord("m", **{field: value})


def test_forward_cost_has_no_backward():
    out, rec = forward_cost("dkvb-uva", jnp.matmul, jnp.ones((4, 8)), jnp.ones((8, 2)), calls=3)
    assert out.shape == (4, 2)
    assert rec.backward_flops == 0 and rec.num_backward_calls == 0
    assert rec.forward_flops == 3 * 2 * 4 * 8 * 2


def test_loop_free_equivalent_counts_every_iteration():
    # XLA counts a while-loop body once; flops_fn counts the same work without the loop.
    w = jnp.ones((32, 32))
    x = jnp.ones((50, 4, 32))
    looped = lambda x: jax.lax.map(lambda r: r @ w, x)
    _, cost = forward_cost("looped", looped, x, flops_fn=lambda x: x @ w)
    assert cost.forward_flops == pytest.approx(2 * 50 * 4 * 32 * 32)
    _, plain = forward_cost("looped", looped, x)
    assert plain.forward_flops < cost.forward_flops / 10


def test_dense_lookup_model_counts_the_whole_search():
    from dkvb_jax.config import DKVBConfig
    from dkvb_jax.evaluation import dense_lookup_model
    from dkvb_jax.model import DKVB
    from dkvb_jax.model.lookup import lookup_flops

    cfg = DKVBConfig(embed_dim=16, num_classes=3, num_codebooks=16, num_keys=2048, key_dim=4)
    model = DKVB(cfg)  # blocked search: loops over codebook groups and key steps
    x = jnp.ones((64, 16))
    v = model.init(jax.random.key(0), x[:2])
    codes = lambda m: lambda v, x: m.apply(v, x, method=DKVB.codes)
    blocked = compile_with_flops(codes(model), v, x)[1]
    dense = compile_with_flops(codes(dense_lookup_model(model)), v, x)[1]
    assert dense >= lookup_flops(64, 16, 2048, 4) > 4 * blocked
