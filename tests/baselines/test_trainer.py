"""The training loop: a jitted epoch takes the same steps as one call per batch, and the stopping
rule reads the split it is told to."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from dkvb_jax.baselines import FineTuneConfig, OptimizerConfig, StoppingConfig, finetune
from dkvb_jax.baselines.trainer import (
    Phase,
    ce_loss,
    gather_batch,
    make_epoch,
    make_optimizer,
    phase_rows,
)


def _paired_loss(apply_fn):
    ce = ce_loss(apply_fn)

    def loss_fn(params, context, batch):
        retain, forget = batch
        return ce(params, context, retain)[0] - 0.1 * ce(params, context, forget)[0], None

    return loss_fn


@pytest.mark.parametrize(
    "paired, opt", [(False, "sgd"), (True, "adam")], ids=["sgd", "paired-adam"]
)
def test_jitted_epoch_equals_one_step_per_batch(problem, paired, opt):
    head, variables, data = problem
    loss_fn = _paired_loss(head.apply) if paired else ce_loss(head.apply)
    # 139 retain rows in batches of 16: the last batch is padded, the forget stream cycles.
    phase = Phase(
        "p",
        loss_fn,
        data.retain_x,
        data.retain_y,
        16,
        paired=(data.forget_x, data.forget_y, 7) if paired else None,
    )
    optimizer = make_optimizer(OptimizerConfig(name=opt, learning_rate=0.05, weight_decay=1e-3))
    params, context = variables["params"], ({}, None)
    state = optimizer.init(params)
    rows = phase_rows(phase, jax.random.key(3))
    streams = (phase.x, phase.y, *((phase.paired[:2]) if paired else (None, None)))

    @jax.jit
    def step(params, state, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, context, batch)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    ref_params, ref_state, ref_losses = params, state, []
    for i in range(rows[0].shape[0]):
        step_rows = jax.tree.map(lambda r, i=i: r[i], rows)
        ref_params, ref_state, loss = step(ref_params, ref_state, gather_batch(streams, step_rows))
        ref_losses.append(loss)

    got_params, got_state, got_losses = jax.jit(make_epoch(optimizer, loss_fn))(
        params, state, context, streams, rows
    )
    assert got_losses.shape == (rows[0].shape[0],)
    chex.assert_trees_all_close(got_losses, jnp.stack(ref_losses), rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(got_params, ref_params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(got_state, ref_state, rtol=1e-6, atol=1e-7)


def _finetune(problem, stopping, **data_changes):
    head, variables, data = problem
    cfg = FineTuneConfig(
        batch_size=16,
        optimizer=OptimizerConfig(learning_rate=0.1, weight_decay=0.05),
        stopping=stopping,
        progress=False,
    )
    return finetune(
        head.apply, variables, data._replace(**data_changes), cfg, key=jax.random.key(2)
    )


def test_stopping_reads_the_split_it_names(problem):
    # A target on held-out forget rows: the run stops on that split's accuracy, not the train one.
    base = StoppingConfig(max_epochs=10, forget_target=None, patience=None)
    _, _, full = _finetune(problem, base)
    target = sorted(full.val_forget_acc[1:])[len(full.val_forget_acc) // 2]
    cfg = dataclasses.replace(base, forget_target=target, split="val_forget")
    _, cost, traj = _finetune(problem, cfg)
    first = next(
        e for e, a in zip(full.epoch, full.val_forget_acc, strict=True) if e and a <= target
    )
    assert traj.stop_reason == "target" and traj.stop_epoch == first == cost.extra["epochs"]
    assert traj.val_forget_acc[-1] <= target


def test_stopping_on_an_unmonitored_split_is_an_error(problem):
    cfg = StoppingConfig(max_epochs=2, forget_target=0.1, split="val_forget")
    with pytest.raises(ValueError, match=r"split='val_forget' is not among the monitored splits"):
        _finetune(problem, cfg, val_forget_x=None, val_forget_y=None)


def test_stopping_config_rejects_unknown_split():
    with pytest.raises(ValueError, match="StoppingConfig.split"):
        StoppingConfig(split="retain")
