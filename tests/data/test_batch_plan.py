"""Shuffling, per-host sharding and batching of indices (dkvb_jax.data.sharding)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkvb_jax.data import sharding

plans = st.tuples(
    st.integers(0, 200),  # num_examples
    st.integers(1, 17),  # batch_size
    st.integers(1, 5),  # process_count
    st.booleans(),  # shuffle
    st.integers(0, 2**31 - 1),  # seed
)


def _all_hosts(n, b, p, shuffle, seed, drop, epoch=0):
    return [
        sharding.batch_plan(
            n,
            b,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            drop_remainder=drop,
            process_index=i,
            process_count=p,
        )
        for i in range(p)
    ]


@settings(max_examples=60, deadline=None)
@given(plans)
def test_padded_plans_are_disjoint_complete_and_in_step(args):
    n, b, p, shuffle, seed = args
    hosts = _all_hosts(n, b, p, shuffle, seed, drop=False)
    seen = np.concatenate([h.indices[h.valid] for h in hosts])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # Disjoint and complete.
    assert len({h.num_batches for h in hosts}) == 1  # Same step count on every host.
    for h in hosts:
        assert h.indices.shape == (h.num_batches, b)
        assert (h.indices[~h.valid] == sharding.PAD_INDEX).all()
        # Padding only at the end of a host's stream.
        flat = h.valid.reshape(-1)
        assert not (np.diff(flat.astype(int)) > 0).any()


@settings(max_examples=60, deadline=None)
@given(plans)
def test_dropping_plans_are_disjoint_full_and_in_step(args):
    n, b, p, shuffle, seed = args
    hosts = _all_hosts(n, b, p, shuffle, seed, drop=True)
    expected_batches = (n // p) // b
    seen = np.concatenate([h.indices.reshape(-1) for h in hosts])
    assert len(np.unique(seen)) == seen.size == p * expected_batches * b
    assert ((0 <= seen) & (seen < n)).all()
    for h in hosts:
        assert h.num_batches == expected_batches and h.valid.all()


def test_unshuffled_hosts_read_contiguous_ranges():
    hosts = _all_hosts(10, 4, 2, shuffle=False, seed=0, drop=False)
    np.testing.assert_array_equal(hosts[0].indices, [[0, 1, 2, 3], [4, -1, -1, -1]])
    np.testing.assert_array_equal(hosts[1].indices, [[5, 6, 7, 8], [9, -1, -1, -1]])


def test_shuffle_is_deterministic_per_seed_and_epoch():
    def order(seed, epoch):
        return sharding.batch_plan(
            100, 10, shuffle=True, seed=seed, epoch=epoch, process_index=0, process_count=1
        ).indices

    np.testing.assert_array_equal(order(3, 0), order(3, 0))
    assert not np.array_equal(order(3, 0), order(4, 0))
    assert not np.array_equal(order(3, 0), order(3, 1))
    assert not np.array_equal(order(3, 0).reshape(-1), np.arange(100))


def test_defaults_come_from_jax():
    plan = sharding.batch_plan(5, 2, drop_remainder=False)  # jax: one process here.
    np.testing.assert_array_equal(plan.indices, [[0, 1], [2, 3], [4, -1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=-1, batch_size=2), "num_examples"),
        (dict(num_examples=4, batch_size=0), "batch_size"),
        (dict(num_examples=4, batch_size=2, process_count=0, process_index=0), "process_count"),
        (dict(num_examples=4, batch_size=2, process_count=2, process_index=2), "process_index"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sharding.batch_plan(**kwargs)
