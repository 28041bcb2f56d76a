"""The optimisation-baseline rows of a class-unlearning run: fine-tuning the DKVB values, and the
linear head on the same embeddings with the baselines on it (:data:`dkvb_jax.baselines.BASELINES`).

Fine-tune, NegGrad+ and SCRUB run until their forget-test accuracy is as low as the DKVB row
they are costed against (within the table's tolerance), or to their epoch cap: a cost ratio
means something only at equal forgetting.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import baselines as bl
from dkvb_jax.evaluation import CostRecord, ResultRow
from dkvb_jax.experiment.config import ExperimentConfig
from dkvb_jax.experiment.fitting import standardizer

ORIGINAL_HEAD = "original (linear head)"
DKVB_FINETUNE = "DKVB-finetune"


@dataclasses.dataclass(frozen=True)
class LinearHeadModel:
    """The linear head the baselines act on, with the standardisation of its inputs."""

    head: bl.LinearHead
    variables: dict
    mu: np.ndarray
    sd: np.ndarray
    cost: CostRecord

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mu) / self.sd).astype(np.float32)


def fit_head(
    x: np.ndarray, y: np.ndarray, num_classes: int, *, epochs: int, key: jax.Array
) -> LinearHeadModel:
    """Trains the linear head on standardised embeddings (SGD lr 0.1, momentum 0.9, wd 5e-4)."""
    mu, sd = standardizer(x)
    head = bl.LinearHead(num_classes)
    k_init, k_train = jax.random.split(key)
    xs = ((np.asarray(x, np.float32) - mu) / sd).astype(np.float32)
    v0 = head.init(k_init, jnp.zeros((1, xs.shape[1]), jnp.float32))
    v, cost, _ = bl.fit_classifier(
        head.apply,
        v0,
        jnp.asarray(xs),
        jnp.asarray(y, jnp.int32),
        bl.TrainConfig(epochs=epochs),
        key=k_train,
        method="train_head",
    )
    return LinearHeadModel(head, v, mu, sd, cost)


def baseline_config(
    name: str,
    *,
    config: ExperimentConfig,
    target: float | None,
    progress: bool,
    init_fn=None,
):
    """A baseline's config; fine-tune, NegGrad+ and SCRUB stop at forget-test accuracy <= `target`
    or at ``config.baseline_max_epochs``, never on a plateau (without `target`: at
    ``config.target`` on the forget training rows, the paper's rule)."""
    if target is None:
        stopping = bl.StoppingConfig(
            max_epochs=config.baseline_max_epochs, forget_target=config.target, patience=None
        )
    else:
        stopping = bl.StoppingConfig(
            max_epochs=config.baseline_max_epochs,
            forget_target=min(target, 1.0),
            patience=None,
            split="val_forget",
        )
    if name == "retrain":
        return bl.RetrainConfig(init_fn=init_fn, epochs=config.head_epochs, progress=progress)
    if name == "finetune":
        return bl.FineTuneConfig(stopping=stopping, progress=progress)
    if name == "neggrad+":
        return bl.NegGradConfig(alpha=config.neggrad_alpha, stopping=stopping, progress=progress)
    return bl.SCRUBConfig(stopping=stopping, progress=progress)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineRun:
    """What the baseline rows share.

    Attributes:
      train, test: embeddings and labels of the values' training rows and of the test split.
      forget: the forget classes.
      config: the experiment settings.
      target: forget-test accuracy to stop at (the reference DKVB row's, plus the tolerance);
        None without a DKVB row.
      key: PRNG key of the baselines' shuffles.
      head_key: PRNG key of the linear head's training.
      progress: progress bars.
      measure: ``(name, apply_fn, variables, *, data, test, cost, original, **extra)`` -> row.
      cached_row: ``(name, compute) -> ResultRow``, from the row cache when there.
      step: called with each row's name before it runs (a progress bar's postfix).
    """

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    forget: tuple[int, ...]
    config: ExperimentConfig
    target: float | None
    key: jax.Array
    head_key: jax.Array
    progress: bool
    measure: Callable[..., ResultRow]
    cached_row: Callable[[str, Callable[[], ResultRow]], ResultRow]
    step: Callable[[str], None]

    def make_config(self, name: str, **kw):
        return baseline_config(
            name, config=self.config, target=self.target, progress=self.progress, **kw
        )


def dkvb_finetune_row(run: BaselineRun, model, variables, data, original: ResultRow) -> ResultRow:
    """Fine-tuning the DKVB values themselves on the retain data."""
    run.step(DKVB_FINETUNE)

    def compute():
        cfg = run.make_config("finetune")
        try:
            v, cost, traj = bl.finetune(model.apply, variables, data, cfg, key=run.key)
        except bl.NonFiniteLossError as e:
            return ResultRow(DKVB_FINETUNE, extra={"error": str(e)})
        return run.measure(
            DKVB_FINETUNE,
            model.apply,
            v,
            data=data,
            test=run.test,
            cost=cost,
            original=original,
            model="dkvb",
            trajectory=traj.to_dict(),
            stopping=dataclasses.asdict(cfg.stopping),
        )

    return run.cached_row(DKVB_FINETUNE, compute)


def head_rows(
    run: BaselineRun, head: LinearHeadModel | None, num_classes: int, *, cached: bool
) -> dict[str, ResultRow]:
    """The linear head's original row and a row per baseline on it.

    Args:
      head: an already trained head, or None to train one (only when a row must be computed).
      cached: every row is in the cache already: the head is not needed.
    """
    names = [ORIGINAL_HEAD, *run.config.baselines]
    if cached:
        return {name: run.cached_row(name, lambda: None) for name in names}
    (x, y), (x_te, y_te) = run.train, run.test
    run.step("linear head")
    if head is None:
        head = fit_head(x, y, num_classes, epochs=run.config.head_epochs, key=run.head_key)
    data = bl.class_unlearning_data(
        head.inputs(x), y, run.forget, val_x=head.inputs(x_te), val_y=y_te
    )
    measure = functools.partial(run.measure, data=data, test=(head.inputs(x_te), y_te))
    rows = {
        ORIGINAL_HEAD: run.cached_row(
            ORIGINAL_HEAD,
            lambda: measure(
                ORIGINAL_HEAD,
                head.head.apply,
                head.variables,
                cost=None,
                original=None,
                model="linear head",
                training_cost=head.cost.to_dict(),
            ),
        )
    }
    init_fn = bl.params_initializer(head.head, x.shape[1])
    for i, name in enumerate(run.config.baselines):
        run.step(name)

        def compute(name=name, i=i):
            cfg = run.make_config(name, init_fn=init_fn)
            key = jax.random.fold_in(run.key, i + 1)
            try:
                v, cost, traj = bl.BASELINES[name](
                    head.head.apply, head.variables, data, cfg, key=key
                )
            except bl.NonFiniteLossError as e:
                return ResultRow(name, extra={"error": str(e), "model": "linear head"})
            stopping = getattr(cfg, "stopping", None)  # the retrain oracle has none
            return measure(
                name,
                head.head.apply,
                v,
                cost=cost,
                original=rows[ORIGINAL_HEAD],
                model="linear head",
                trajectory=traj.to_dict(),
                stopping=stopping and dataclasses.asdict(stopping),
            )

        rows[name] = run.cached_row(name, compute)
    return rows
