"""Sweep grids: a value above what there is tries all of it, so the last point can reach 0."""

from dkvb_jax.experiment import ExperimentConfig, holdout_rows, run_class_unlearning
from dkvb_jax.testing import clustered_embeddings

CFG = ExperimentConfig(
    num_codebooks=8,
    num_keys=32,
    key_dim=4,
    key_epochs=2,
    baselines=(),
    dkvb_finetune=False,
    mia=False,
    methods=("uva", "uve"),
    forget_classes=(1,),
    n_a_grid=(1, 1000),
    n_e_grid=(1, 10_000),
)


def test_grid_values_above_the_keys_or_examples_try_them_all():
    x, y = clustered_embeddings(0, 400, num_classes=4, dim=16)
    xt, yt = clustered_embeddings(1, 160, num_classes=4, dim=16)
    res = run_class_unlearning((x, y), (xt, yt), CFG, progress=False)
    _, rows = holdout_rows(y, round(CFG.holdout_fraction * len(y)), CFG.seed)
    forget_rows = int((y[rows] == 1).sum())
    assert res.sweeps["uva"].ns == [1, 32]
    assert res.sweeps["uve"].ns == [1, forget_rows]
    # Every key of the class, or every forget example: the target is reached.
    assert res.sweeps["uva"].smallest_n is not None and res.sweeps["uve"].smallest_n is not None


def test_default_grids_go_up_to_every_forget_example_of_a_cifar10_class():
    # CIFAR-10 has 5,000 training images per class (4,000 after the default held-out 20%).
    assert max(ExperimentConfig().n_e_grid) >= 5000
