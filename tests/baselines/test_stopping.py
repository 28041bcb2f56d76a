"""The stopping rule against hand-worked histories."""

import pytest

from dkvb_jax.baselines import StoppingConfig, stop_reason
from dkvb_jax.baselines.trainer import OptimizerConfig, epoch_batches, lr_at_epoch


@pytest.mark.parametrize(
    "history, config, expected",
    [
        ([1.0], StoppingConfig(), None),
        ([1.0, 0.5], StoppingConfig(), None),
        ([1.0, 0.0], StoppingConfig(), "target"),
        ([1.0, 0.2], StoppingConfig(forget_target=0.25), "target"),
        ([1.0, 0.5, 0.5, 0.5], StoppingConfig(patience=2), "plateau"),
        ([1.0, 0.5, 0.5, 0.4], StoppingConfig(patience=2), None),
        ([1.0, 0.9, 0.8], StoppingConfig(max_epochs=2), "max_epochs"),
        (
            [1.0, 0.9, 0.9, 0.9],
            StoppingConfig(forget_target=None, patience=None, max_epochs=5),
            None,
        ),
        ([1.0, 0.5, 0.4995, 0.4993], StoppingConfig(patience=2, min_delta=1e-3), "plateau"),
    ],
)
def test_stop_reason(history, config, expected):
    assert stop_reason(history, config) == expected


def test_lr_decay_follows_repdistiller_rule():
    cfg = OptimizerConfig(learning_rate=1.0, lr_decay_epochs=(3, 5), lr_decay_rate=0.1)
    assert [lr_at_epoch(cfg, e) for e in (1, 3, 4, 5, 6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize("n, bs", [(10, 3), (9, 3), (1, 4)])
def test_epoch_batches_cover_every_example_once(n, bs):
    import jax

    idx, w = epoch_batches(jax.random.key(0), n, bs)
    assert idx.shape == w.shape == (-(-n // bs), bs)
    assert sorted(idx[w > 0].tolist()) == list(range(n))
    assert w.sum() == n
