"""Fuzzing the public unlearning API: a correct result, or an error that names a bad argument.

Inputs are drawn from small shapes and mixed dtypes with NaN/inf, negative, fractional and
out-of-range entries. Each test knows which of its arguments are bad (an oracle over the drawn
values): bad input must raise ValueError/TypeError naming one of them, good input must give
the right selection. The model is tiny (2 codebooks x 8 keys) so every example runs in
milliseconds once its shapes are compiled.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unlearning_testutil import np_top_n

from dkvb_jax import DKVB, DKVBConfig, exact
from dkvb_jax.training import compute_codes
from dkvb_jax.unlearning import (
    forget_classes,
    forget_examples,
    unlearn_via_activations,
    unlearn_via_examples,
)

C, K, Y, D = 2, 8, 3, 4
CFG = DKVBConfig(embed_dim=D, num_classes=Y, num_codebooks=C, num_keys=K, key_dim=2)
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def tiny():
    model = DKVB(CFG)
    v = model.init(jax.random.key(0), jnp.zeros((2, D)))
    return model, jax.tree.map(np.asarray, v)


def check_outcome(call, bad: set[str], expected=None):
    """Runs `call`; bad input must raise an error naming one of `bad`, good input `expected`."""
    try:
        result = call()
    except (ValueError, TypeError) as e:
        assert bad, f"good input refused: {e}"
        assert any(name in str(e) for name in bad), f"{e!r} names none of {sorted(bad)}"
        return None
    assert not bad, f"bad {sorted(bad)} accepted"
    if expected is not None:
        expected(result)
    return result


def assert_search_mask(new, old, selection):
    np.testing.assert_array_equal(new["mask"]["search"], old["mask"]["search"] | selection)
    np.testing.assert_array_equal(new["mask"]["readout"], old["mask"]["readout"])
    np.testing.assert_array_equal(new["params"]["values"], old["params"]["values"])


# --------------------------------------------------------------------------- strategies

# Two thirds valid, so most examples get as far as the array checks.
N_VALUES = st.one_of(
    st.integers(1, K), st.integers(1, K), st.sampled_from([-1, 0, K + 1, 2.0, True, "3"])
)
CLASSES = st.one_of(
    st.integers(0, Y - 1),
    st.lists(st.integers(0, Y - 1), min_size=1, max_size=Y - 1),
    st.integers(-1, Y + 1),
    st.lists(st.integers(-1, Y + 1), max_size=Y + 1),
    st.sampled_from([1.0, [0.0], "1"]),
)


def n_is_bad(n, upper: int) -> bool:
    return isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= upper


def classes_of(classes):
    """The class ids `classes` names, or None when they are not a valid request."""
    if isinstance(classes, bool) or isinstance(classes, float | str):
        return None
    ids = [classes] if isinstance(classes, int) else classes
    if not ids or any(not isinstance(c, int) for c in ids):
        return None
    if any(not 0 <= c < Y for c in ids) or len(set(ids)) == Y:
        return None
    return sorted(set(ids))


@st.composite
def histograms(draw):
    """(usage, is_bad): a per-class histogram, sometimes of the wrong shape, dtype or values."""
    shape = draw(st.sampled_from([(Y, C, K)] * 4 + [(C, K), (Y, C, K - 1)]))
    dtype = draw(st.sampled_from([np.int32, np.int64, np.uint8, np.float32, np.float64, bool]))
    size = int(np.prod(shape))
    counts = np.asarray(draw(st.lists(st.integers(0, 4), min_size=size, max_size=size)), float)
    counts = counts.reshape(shape)
    bad = shape != (Y, C, K) or dtype is bool
    if len(shape) == 3 and draw(st.integers(0, 3)) == 0:
        counts[draw(st.integers(0, Y - 1))] = 0  # a class the histogram never saw
    corrupt = draw(st.sampled_from([None, np.nan, np.inf, -1.0, 0.5]))
    floating = np.issubdtype(dtype, np.floating)
    # Only what the dtype can hold: NaN/inf/0.5 need floats, -1 a signed dtype.
    if corrupt is not None and (floating or (corrupt == -1.0 and dtype in (np.int32, np.int64))):
        counts.flat[draw(st.integers(0, counts.size - 1))] = corrupt
        bad = True
    return counts.astype(dtype), bad


def embeddings(max_rows=4):
    """(x, is_bad): forget embeddings, sometimes with NaN/inf, the wrong width or dtype."""
    return st.tuples(
        st.integers(0, max_rows),
        st.sampled_from([D, D, D, D - 1]),
        st.sampled_from([np.float32, np.float32, np.float64, np.int32]),
        st.sampled_from([None, None, np.nan, np.inf]),
        st.integers(0, 2**16),
    ).map(_make_embeddings)


def _make_embeddings(spec):
    rows, width, dtype, corrupt, seed = spec
    x = np.random.default_rng(seed).normal(size=(rows, width))
    bad = rows == 0 or width != D or dtype is np.int32
    if corrupt is not None and rows and dtype is not np.int32:
        x[0, 0] = corrupt
        bad = True
    return x.astype(dtype), bad


ROWS = st.integers(1, 4)


@st.composite
def codes(draw, rows=ROWS):
    """(indices, valid, is_bad): codes whose valid entries may be negative or past the keys."""
    n = draw(rows)
    idx = draw(st.lists(st.integers(-2, K + 1), min_size=n * C, max_size=n * C))
    valid = draw(st.lists(st.booleans(), min_size=n * C, max_size=n * C))
    idx = np.asarray(idx, np.int32).reshape(n, C, 1)
    valid = np.asarray(valid).reshape(n, C, 1)
    bad = bool(((idx < 0) | (idx >= K))[valid].any())
    return idx, valid, bad


def codes_selection(idx, valid):
    sel = np.zeros((C, K), bool)
    for row, cb, t in zip(*np.nonzero(valid), strict=True):
        sel[cb, idx[row, cb, t]] = True
    return sel


# --------------------------------------------------------------------------- properties


@FUZZ
@given(histograms(), CLASSES, N_VALUES)
def test_uva_from_a_histogram(hist, classes, n_a):
    model, v = tiny()
    usage, usage_bad = hist
    ids = classes_of(classes)
    bad = {"n_a"} if n_is_bad(n_a, K) else set()
    bad |= {"classes"} if ids is None else set()
    if not usage_bad and ids is not None and not all(usage[c].any() for c in ids):
        usage_bad = True  # a requested class without recorded usage would mask nothing
    bad |= {"usage"} if usage_bad else set()

    def expected(result):
        sel = np.zeros((C, K), bool)
        for c in ids:
            sel |= np_top_n(usage[c].astype(np.float64), n_a)
        assert_search_mask(result[0], v, sel)

    check_outcome(
        lambda: unlearn_via_activations(model, v, n_a, usage=usage, classes=classes), bad, expected
    )
    check_outcome(lambda: forget_classes(model, v, classes, n_a, usage=usage), bad, expected)


@FUZZ
@given(embeddings(), N_VALUES)
def test_uva_from_forget_data(forget, n_a):
    model, v = tiny()
    x, x_bad = forget
    bad = ({"n_a"} if n_is_bad(n_a, K) else set()) | ({"forget_x"} if x_bad else set())

    def expected(result):
        idx, valid = (np.asarray(a) for a in compute_codes(model, v, x))
        used = codes_selection(idx, valid)
        new = result[0]["mask"]["search"]
        assert (new <= used).all() and (new.sum(-1) <= n_a).all()
        assert (new.sum(-1) == np.minimum(used.sum(-1), n_a)).all()

    check_outcome(lambda: unlearn_via_activations(model, v, n_a, forget_x=x), bad, expected)


@FUZZ
@given(codes(), st.one_of(st.none(), N_VALUES))
def test_uve_from_codes(drawn, n_e):
    model, v = tiny()
    idx, valid, codes_bad = drawn
    n = idx.shape[0]
    bad = ({"codes"} if codes_bad else set()) | (
        {"n_e"} if n_e is not None and n_is_bad(n_e, n) else set()
    )
    rows = n if n_e is None or "n_e" in bad else n_e

    def expected(result):
        assert_search_mask(result[0], v, codes_selection(idx[:rows], valid[:rows]))

    call = lambda: unlearn_via_examples(model, v, codes=(idx, valid), n_e=n_e)
    check_outcome(call, bad, expected)


@FUZZ
@given(codes(rows=st.just(6)), st.lists(st.integers(-2, 8), max_size=4) | st.just([1.5]))
def test_forget_examples_by_id(drawn, example_ids):
    model, v = tiny()
    idx, valid, codes_bad = drawn
    in_range = all(isinstance(i, int) and 0 <= i < 6 for i in example_ids)
    ids_bad = not example_ids or not in_range
    bad = ({"codes"} if codes_bad else set()) | ({"example_ids"} if ids_bad else set())

    def expected(result):
        rows = sorted(set(example_ids))
        assert_search_mask(result[0], v, codes_selection(idx[rows], valid[rows]))
        assert result[1].forgotten_examples == rows

    check_outcome(lambda: forget_examples(model, v, example_ids, codes=(idx, valid)), bad, expected)


@FUZZ
@given(embeddings(max_rows=6), st.lists(st.integers(-1, Y), min_size=6, max_size=6), CLASSES)
def test_forget_classes_from_labelled_data(forget, labels, classes):
    model, v = tiny()
    x, x_bad = forget
    y = np.asarray(labels[: x.shape[0]], np.int32)
    ids = classes_of(classes)
    bad = {"x"} if x_bad else set()
    bad |= {"y"} if not x_bad and ((y < 0) | (y >= Y)).any() else set()
    bad |= {"classes"} if ids is None else set()
    if not bad and not all((y == c).any() for c in ids):
        bad = {"usage"}  # no row of a requested class: nothing recorded to mask
    check_outcome(lambda: forget_classes(model, v, classes, 2, x=x, y=y), bad)


# --------------------------------------------------------------------------- exact


@FUZZ
@given(codes(rows=st.integers(2, 6)), st.data())
def test_exact_fit_and_removal(drawn, data):
    """fit_exact refuses codes outside the keys; removal equals a refit on the rest, bit for bit."""
    model, v = tiny()
    idx, valid, codes_bad = drawn
    n = idx.shape[0]
    labels = np.asarray(data.draw(st.lists(st.integers(-1, Y), min_size=n, max_size=n)), np.int32)
    labels_bad = bool(((labels < 0) | (labels >= Y)).any())
    bad = ({"codes"} if codes_bad else set()) | ({"labels"} if labels_bad else set())
    fitted = check_outcome(lambda: exact.fit_exact(model, v, (idx, valid), labels), bad)
    if fitted is None:
        return
    v1, stats = fitted
    forget = data.draw(st.lists(st.integers(-1, n), max_size=3))
    ids_bad = not forget or any(not 0 <= i < n for i in forget)
    keep = np.setdiff1d(np.arange(n), forget)

    def equals_refit(result):
        ref, _ = exact.fit_exact(model, v, (idx[keep], valid[keep]), labels[keep], keep)
        got, want = (np.asarray(w["params"]["values"]) for w in (result[0], ref))
        assert got.tobytes() == want.tobytes()

    # An empty request is refused as "pass at least one example id".
    ids_names = {"ids", "example id"} if ids_bad else set()
    refit = equals_refit if keep.size else None
    check_outcome(lambda: exact.remove_examples(v1, stats, forget), ids_names, refit)
    classes = data.draw(CLASSES)
    ids = classes_of(classes)
    counted = ids is not None and all((labels == c).any() for c in ids)
    names = set() if counted else {"classes"}
    check_outcome(lambda: exact.remove_classes(v1, stats, classes), names)


@pytest.mark.parametrize("n_a", [np.int64(2), 2])
def test_numpy_ints_are_ints(n_a):
    """The oracle above treats Python ints as good; NumPy ints are accepted the same way."""
    model, v = tiny()
    usage = np.ones((Y, C, K), np.int32)
    new, _ = unlearn_via_activations(model, v, n_a, usage=usage, classes=[0])
    assert new["mask"]["search"].sum() == 2 * C
