"""Every class's forgetting at once equals the brute-force masked search and the per-class
evaluation, on one device and on a codebook mesh."""

import jax

if jax.device_count() < 8:
    jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_stored_eval import C, K, Y, _problem, _reference, _store, _uva  # noqa: E402

from dkvb_jax import parallel  # noqa: E402
from dkvb_jax.unlearning import all_classes, stored_eval  # noqa: E402


@pytest.mark.parametrize(
    "seed, blocks, hard, n, mesh",
    [
        (2, 1, False, 5, False),
        (1, 2, False, 3, False),  # two blocks on one device: a scan over them
        (0, 8, True, 40, False),  # 40 keys > the ranking's depth: exact searches past it
        (0, 8, True, 40, True),
        (1, 2, False, 3, True),
    ],
)
def test_counts_equal_brute_force_and_the_per_class_evaluation(seed, blocks, hard, n, mesh):
    """300 rows in steps of 16 (the last step overlaps the one before), 3 steps per call (the
    last call runs past the end): every class's counts equal a full masked search's."""
    problem = _problem(seed=seed, blocks=blocks, hard=hard)
    keys, q_ev, y_ev, _, _, values = problem
    mesh = parallel.data_codebook_mesh(1, blocks) if mesh else None
    store = _store(problem, mesh)
    counts, sizes = all_classes.evaluate_all_classes(
        store, range(Y), n, rows=16, steps_per_call=3, mesh=mesh, progress=False
    )
    per_class, per_sizes, _ = stored_eval.evaluate_every_class(_store(problem), range(Y), n)
    np.testing.assert_array_equal(counts, per_class)
    for label in range(Y):
        sel = np.asarray(_uva(store, label, n)).reshape(C, K)
        want = _reference(keys, q_ev, y_ev, values, sel)
        forget = y_ev == label
        assert counts[label].tolist() == [want[forget].sum(), want[~forget].sum()]
    # Masked pairs and fallbacks beyond the ranking, as the per-class evaluation counts them.
    np.testing.assert_array_equal(sizes.pairs, per_sizes[:, 0])
    np.testing.assert_array_equal(sizes.beyond, per_sizes[:, 1])
    np.testing.assert_array_equal(sizes.rows, per_sizes[:, 2])
    assert (sizes.undecided <= sizes.rows).all()
    assert (sizes.deeper >= sizes.beyond).all() and (sizes.pairs >= sizes.deeper).all()
    if hard:
        assert sizes.beyond.sum() > 0
    # Both paths ran: cases decided by the bounds, and cases given their full logits.
    assert 0 < sizes.undecided.sum() < sizes.pairs.sum()


def test_mesh_gives_the_same_sizes_and_a_subset_of_classes_in_any_order():
    problem = _problem(seed=1, blocks=8)
    mesh = parallel.data_codebook_mesh(1, 8)
    one = all_classes.evaluate_all_classes(_store(problem), [4, 1], 3, rows=32, progress=False)
    many = all_classes.evaluate_all_classes(
        _store(problem, mesh), [4, 1], 3, rows=32, mesh=mesh, progress=False
    )
    whole = all_classes.evaluate_all_classes(_store(problem), range(Y), 3, progress=False)
    np.testing.assert_array_equal(one[0], whole[0][[4, 1]])
    np.testing.assert_array_equal(many[0], one[0])
    for got, want in zip(many[1], one[1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_class_masks_pack_each_class_selection():
    problem = _problem(seed=3)
    store = _store(problem)
    classes = [5, 0, 3]
    bits = np.asarray(all_classes.class_masks(store, classes, 7))
    assert bits.shape == (*store.keys.shape[:3], 1) and bits.dtype == np.uint32
    for i, label in enumerate(classes):
        np.testing.assert_array_equal((bits[..., 0] >> i) & 1, np.asarray(_uva(store, label, 7)))
    assert not (bits >> len(classes)).any()  # the padding classes mask nothing


@pytest.mark.parametrize("codebooks", [256, 32, 5])
def test_exact_dot_is_the_int32_sum_for_any_int32_values(codebooks):
    rng = np.random.default_rng(codebooks)
    hits = rng.random((2, codebooks, 7)) < 0.5
    vecs = rng.integers(-(2**31), 2**31, (2, codebooks, 3), dtype=np.int64).astype(np.int32)
    got = jax.jit(all_classes._exact_dot)(hits, vecs)
    want = np.einsum("bcy,bcv->byv", hits.astype(np.int64), vecs.astype(np.int64))
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.int32))  # int32 wrap-around


@pytest.mark.parametrize(
    "span, codebooks, shift",
    [(65536, 256, 0), (65537, 256, 1), (600_000, 256, 4), (600_000, 32, 1)],
)
def test_value_shift_is_the_smallest_exact_one(span, codebooks, shift):
    values = np.array([-span // 2, span - span // 2], np.int32)
    assert all_classes.value_shift(values, codebooks) == shift
    # A shifted difference's sum over the codebooks stays within float32's exact integers.
    assert codebooks * -(-span // 2**shift) <= 2**24


def test_stores_it_cannot_evaluate_exactly_are_refused():
    problem = _problem(seed=0)
    store = _store(problem)
    bad = store.replace(codes=(store.codes + 1) % K)
    with pytest.raises(ValueError, match=r"ranked\[..., 0\] == codes"):
        all_classes.evaluate_all_classes(bad, [0], 3, progress=False)
    wide = store.replace(values=store.values.at[0, 0, 0, 0].set(-(2**27)))
    with pytest.raises(ValueError, match="would overflow the int32 bounds"):
        all_classes.evaluate_all_classes(wide, [0], 3, progress=False)
    with pytest.raises(ValueError, match="at least 3 keys per codebook"):
        all_classes.evaluate_all_classes(store.replace(ranked=store.ranked[..., :2]), [0], 3)
