"""Library-level orchestration shared by the command line, the experiment scripts and notebooks.

fitted = fit_dkvb(config, x_train, y_train, key=jax.random.key(0))
result = run_class_unlearning((x_tr, y_tr), (x_te, y_te), ExperimentConfig())
result.save('outputs/cifar10'); save_plots(result, 'outputs/cifar10')
"""

from dkvb_jax.experiment.class_unlearning import (
    BASELINE_NAMES,
    DKVB_METHODS,
    RECIPES,
    ClassUnlearningResult,
    ExperimentConfig,
    LinearHeadModel,
    best_learned_class,
    fit_head,
    run_class_unlearning,
)
from dkvb_jax.experiment.fitted import FittedDKVB, load_fitted, save_fitted
from dkvb_jax.experiment.fitting import build_model, fit_dkvb, standardizer
from dkvb_jax.experiment.recipe import Fit, fit_from_config, holdout_rows

# The plots load matplotlib (about a second): imported on first use, so `dkvb --help` and code
# that never plots do not pay for it.
_PLOTS = ("plot_accuracy_vs_cost", "plot_mean_sweep", "plot_per_class", "plot_sweep", "save_plots")


def __getattr__(name: str):
    if name in _PLOTS:
        from dkvb_jax.experiment import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASELINE_NAMES",
    "DKVB_METHODS",
    "RECIPES",
    "Fit",
    "ClassUnlearningResult",
    "ExperimentConfig",
    "FittedDKVB",
    "LinearHeadModel",
    "best_learned_class",
    "build_model",
    "fit_dkvb",
    "fit_from_config",
    "fit_head",
    "holdout_rows",
    "load_fitted",
    "plot_accuracy_vs_cost",
    "plot_mean_sweep",
    "plot_per_class",
    "plot_sweep",
    "run_class_unlearning",
    "save_fitted",
    "save_plots",
    "standardizer",
]
