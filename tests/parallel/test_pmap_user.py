"""A user's own `jax.pmap` evaluation loop around the model and the unlearning core.

The loop is written the way pmap code usually is: the data in global batches split into
per-device batches `[devices, per_device, ...]`, a ragged last batch padded and masked, one
pmapped step with an `axis_name` that `lax.psum`s the correct counts. Unlearning happens inside
the pmapped step (from a histogram the devices summed) and must give exactly the single-device
counts and variables on 8 forced CPU devices.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny import CONFIG, tiny_problem

from dkvb_jax import training, unlearning
from dkvb_jax.errors import InputError
from dkvb_jax.model import DKVB

DEVICES = 8
PER_DEVICE = 4
N_A = 2


def device_batches(x, y):
    """Global batches `[devices, per_device, ...]`; the last one padded, with validity."""
    step = DEVICES * PER_DEVICE
    for start in range(0, len(x), step):
        xb, yb = x[start : start + step], y[start : start + step]
        pad = step - len(xb)
        valid = np.arange(step) < len(xb)
        xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        shape = (DEVICES, PER_DEVICE)
        yield xb.reshape(*shape, -1), yb.reshape(shape), valid.reshape(shape)


@functools.cache
def make_steps(model):
    """The user's two pmapped steps: per-class usage, and unlearn-then-evaluate."""

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(None, 0, 0, 0))
    def usage_step(variables, x, y, valid):
        idx, ok = model.apply(variables, x, method=DKVB.codes)
        ok = ok & valid[:, None, None]
        return unlearning.psum_usage(idx, ok, CONFIG.num_keys, "batch", y, CONFIG.num_classes)

    @functools.partial(jax.pmap, axis_name="batch", in_axes=(None, None, None, 0, 0, 0))
    def eval_step(variables, usage, forget, x, y, valid):
        # Forget the `forget` classes by UvA from the summed usage, then count correct rows.
        selection = unlearning.mask_top_n_per_class(usage, forget, N_A)
        unlearned = unlearning.apply_selection(variables, selection)
        hit = (jnp.argmax(model.apply(unlearned, x), axis=-1) == y) & valid
        is_forget = forget[y]
        groups = (hit & is_forget, valid & is_forget, hit & ~is_forget, valid & ~is_forget)
        counts = jnp.stack([jnp.sum(g) for g in groups])
        return jax.lax.psum(counts, "batch"), unlearned

    return usage_step, eval_step


def pmap_loop(model, variables, x, y, forget):
    """Usage `[classes, codebooks, keys]`, counts (forget hits, forget rows, retain hits,
    retain rows) and the unlearned variables, all through the pmapped steps."""
    usage_step, eval_step = make_steps(model)
    # pmap returns one replica per device; they are equal after the psum.
    usage = sum(usage_step(variables, *b)[0] for b in device_batches(x, y))
    counts = 0
    for b in device_batches(x, y):
        step_counts, unlearned = eval_step(variables, usage, forget, *b)
        counts = counts + np.asarray(step_counts[0])
    return usage, counts, jax.tree.map(lambda a: a[0], unlearned)


def single_device(model, variables, x, y, forget_classes):
    usage = training.key_usage(model, variables, x, y)
    unlearned, _ = unlearning.unlearn_via_activations(
        model, variables, N_A, usage=usage, classes=forget_classes
    )
    pred = np.asarray(model.apply(unlearned, jnp.asarray(x))).argmax(-1)
    is_forget = np.isin(y, forget_classes)
    hit = pred == y
    counts = [
        (hit & is_forget).sum(),
        is_forget.sum(),
        (hit & ~is_forget).sum(),
        (~is_forget).sum(),
    ]
    return usage, np.array(counts), unlearned


@pytest.fixture(scope="module")
def problem():
    assert jax.local_device_count() == DEVICES
    return tiny_problem(n=71)  # 71 rows: the last global batch of 32 is ragged


@pytest.mark.parametrize("forget_classes", [[0], [1, 2]])
def test_pmap_loop_matches_single_device(problem, forget_classes):
    model, variables, x, y = problem
    forget = jnp.zeros(CONFIG.num_classes, bool).at[jnp.asarray(forget_classes)].set(True)
    usage, counts, unlearned = pmap_loop(model, variables, x, y, forget)
    want_usage, want_counts, want_unlearned = single_device(model, variables, x, y, forget_classes)
    np.testing.assert_array_equal(np.asarray(usage), np.asarray(want_usage))
    np.testing.assert_array_equal(counts, want_counts)
    assert counts[1] + counts[3] == len(x)  # padding rows were not counted
    chex.assert_trees_all_equal(unlearned, want_unlearned)


def test_validated_wrapper_inside_pmap_says_what_to_use(problem):
    model, variables, x, y = problem
    usage = training.key_usage(model, variables, x, y)

    def step(v, u, xb):
        return unlearning.unlearn_via_activations(model, v, N_A, usage=u, classes=[0])[0]

    xs = jnp.asarray(x[:64]).reshape(DEVICES, -1, x.shape[1])
    with pytest.raises(InputError, match="traced variables.*mask_top_n_per_class"):
        jax.pmap(step, in_axes=(None, None, 0))(variables, usage, xs)
