"""Fixed-size compaction equals its NumPy definition."""

import jax
import numpy as np
import pytest

from dkvb_jax.unlearning.compaction import compact


@pytest.mark.parametrize("n, density, size", [(1000, 0.1, 128), (64, 1.0, 128), (37, 0.0, 64)])
def test_compact_is_nonzero_with_a_size(n, density, size):
    mask = np.random.default_rng(n).random(n) < density
    got, count = jax.jit(compact, static_argnums=1)(mask, size)
    want = np.flatnonzero(mask)[:size]
    np.testing.assert_array_equal(got, np.pad(want, (0, size - want.size), constant_values=n))
    assert int(count) == mask.sum()
