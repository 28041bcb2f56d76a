"""Masking and hard deletion on a variables pytree: purity, accumulation, idempotence."""

import chex
import jax
import numpy as np
import pytest

from dkvb_jax import DKVB, DKVBConfig
from dkvb_jax.errors import InputError, InputTypeError
from dkvb_jax.unlearning import apply_selection, clear_masks, hard_delete, variables_hash
from dkvb_jax.unlearning.masking import MaskingOptions

CFG = DKVBConfig(embed_dim=8, num_classes=3, num_codebooks=4, num_keys=10, key_dim=2)


@pytest.fixture(scope="module")
def variables():
    v = DKVB(CFG).init(jax.random.key(0), np.zeros((1, 8), np.float32))
    values = jax.random.normal(jax.random.key(1), v["params"]["values"].shape)
    return jax.tree.map(np.asarray, {**v, "params": {"values": values}})


def _selection(seed, p=0.3):
    return np.random.default_rng(seed).random((4, 10)) < p


def _leaves(v):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(v)
    }


@pytest.mark.parametrize("mode", ["search", "readout"])
def test_apply_selection_is_pure_and_touches_only_its_mask(variables, mode):
    h = variables_hash(variables)
    out = apply_selection(variables, _selection(0), mode)
    assert variables_hash(variables) == h
    before, after = _leaves(variables), _leaves(out)
    for path in before:
        if path == f"['mask']['{mode}']":
            np.testing.assert_array_equal(after[path], before[path] | _selection(0))
        else:
            np.testing.assert_array_equal(after[path], before[path])


class TestCompose(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_masks_accumulate_and_repeat_is_noop(self):
        v = jax.tree.map(np.asarray, DKVB(CFG).init(jax.random.key(0), np.zeros((1, 8))))
        apply = self.variant(apply_selection, static_argnums=2)
        once = apply(apply(v, _selection(1), "search"), _selection(2), "search")
        np.testing.assert_array_equal(once["mask"]["search"], _selection(1) | _selection(2))
        twice = apply(once, _selection(2), "search")
        assert variables_hash(twice) == variables_hash(once)


@pytest.mark.parametrize("rekey", [None, "far", "random"])
def test_hard_delete_zeroes_selected_values_only_and_is_idempotent(variables, rekey):
    sel = _selection(3)
    rng = jax.random.key(7) if rekey == "random" else None
    h = variables_hash(variables)
    out = hard_delete(variables, sel, rekey=rekey, rng=rng)
    assert variables_hash(variables) == h
    vals, vals0 = np.asarray(out["params"]["values"]), variables["params"]["values"]
    assert not vals[sel].any()
    np.testing.assert_array_equal(vals[~sel], vals0[~sel])
    keys, keys0 = np.asarray(out["frozen"]["keys"]), variables["frozen"]["keys"]
    np.testing.assert_array_equal(keys[~sel], keys0[~sel])
    assert (rekey is None) == np.array_equal(keys[sel], keys0[sel])
    if rekey == "far":  # never anyone's nearest key again, even un-masked
        norms = np.linalg.norm(keys, axis=-1)
        assert norms[sel].min() > 100 * norms[~sel].max()
    np.testing.assert_array_equal(out["frozen"]["projection"], variables["frozen"]["projection"])
    again = hard_delete(out, sel, rekey=rekey, rng=rng)
    assert variables_hash(again) == variables_hash(out)


def test_clear_masks_restores_soft_but_not_hard(variables):
    sel = _selection(4)
    soft = clear_masks(apply_selection(variables, sel))
    assert variables_hash(soft) == variables_hash(variables)
    hard = clear_masks(hard_delete(variables, sel))
    assert not hard["mask"]["search"].any()
    assert not np.asarray(hard["params"]["values"])[sel].any()


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda v: apply_selection(v, _selection(0), "zero"), ValueError, "mode must be one of"),
        (lambda v: hard_delete(v, _selection(0), rekey="random"), ValueError, "needs rng"),
        (lambda v: hard_delete(v, _selection(0), rekey="move"), ValueError, "rekey must be"),
    ],
)
def test_bad_arguments(variables, call, err, match):
    with pytest.raises(err, match=match):
        call(variables)


@pytest.mark.parametrize(
    "mode,hard,rekey",
    [
        ("search", False, None),
        ("readout", False, None),
        ("readout", True, None),
        ("search", True, "far"),
        ("search", True, "random"),
    ],
)
def test_masking_options_applies_what_the_functions_it_packs_do(variables, mode, hard, rekey):
    sel, rng = _selection(5), jax.random.key(3)
    options = MaskingOptions(mode=mode, hard=hard, rekey=rekey, rng=rng)
    if hard:
        want = hard_delete(variables, sel, mode=mode, rekey=rekey, rng=rng)
    else:
        want = apply_selection(variables, sel, mode)
    assert variables_hash(options.apply(variables, sel)) == variables_hash(want)
    assert options.params() == {"mode": mode, "hard": hard, "rekey": rekey}


@pytest.mark.parametrize(
    "options,err,match",
    [
        (dict(mode="zero"), ValueError, "mode must be one of"),
        (dict(hard=True, rekey="move"), InputError, "rekey must be one of"),
        (dict(rekey="far"), InputError, "pass hard=True"),
        (dict(hard=True, rekey="random"), InputError, "needs rng"),
        (dict(hard=True, rekey="random", rng=np.int32(3)), InputTypeError, "rng must be a PRNG"),
        (dict(rng=jax.random.split(jax.random.key(0), 2)), InputTypeError, "rng must be a PRNG"),
    ],
    ids=["mode", "rekey", "rekey-soft", "no-rng", "int-rng", "key-batch"],
)
def test_masking_options_refuses_bad_options(options, err, match):
    with pytest.raises(err, match=match):
        MaskingOptions(**options)
