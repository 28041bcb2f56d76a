"""The settings of a class-unlearning run: :class:`ExperimentConfig`, its recipes, ``--set``.

cfg = ExperimentConfig.recipe("paper", num_keys=1024)
cfg = cfg.replace(**parse_overrides(["value_epochs=6", "n_a_grid=[8,16]"]))
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from dkvb_jax import baselines as bl
from dkvb_jax import exact
from dkvb_jax.config import DKVBConfig
from dkvb_jax.model.preprocess import KINDS as PREPROCESS_KINDS
from dkvb_jax.model.preprocess import Kind
from dkvb_jax.training import KeyInitConfig, ValueTrainConfig
from dkvb_jax.unlearning.registry import DEFAULT_METHODS, METHODS, default_grid, get_method

BASELINE_NAMES: tuple[str, ...] = tuple(bl.BASELINES)
_POSITIVE_INTS = (
    "num_codebooks",
    "num_keys",
    "key_dim",
    "top_k",
    "key_epochs",
    "key_batch_size",
    "value_epochs",
    "value_batch_size",
    "head_epochs",
    "baseline_max_epochs",
    "sweep_max_examples",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Settings of one class-unlearning run (defaults: a modest model for CIFAR-10 on a CPU).

    The default recipe is ``certified``: a stratified 20% of the training split is held out to
    fit the discriminant (LDA) projection, with its labels, and the keys, without; the values
    are derived in closed form from per-pair label counts of the other 80%. No part that cannot
    be subtracted sees those rows, so removing any of them is exact and certified, and the
    model stays within 2 points of a linear probe (README, "Certified exact unlearning").
    :meth:`recipe` gives the others (:data:`RECIPES`): ``lda_adam`` (LDA and keys on every
    training row, Adam-trained values) and ``paper`` (standardised inputs, SGD).

    Attributes:
      num_codebooks, num_keys, key_dim, top_k: the DKVB model (paper: 256 x 4096 x 14, top-1).
      preprocess: input map folded into the projection (see :func:`fit_dkvb`): ``lda``
        (default; fitted on the held-out rows with their labels, or on every training row
        without a held-out split), ``standardize`` (the paper's setting here), ``pca_whiten``
        or ``none``.
      key_epochs, key_batch_size: EMA k-means on the unlabelled key data (paper: ~10 epochs).
      key_max_examples: fit the keys on at most this many random rows of the key data (None:
        all). k-means cost grows with rows x codebooks x keys; ~10 rows per key suffice.
      value_epochs, value_learning_rate, value_batch_size, value_optimizer, value_schedule,
        value_label_smoothing, value_clip_norm: value training (paper: SGD lr 0.3 constant,
        10 epochs, batch 256, label smoothing 0.1, clip 1.0).
      forget_classes: classes to forget; None picks the class the DKVB model learned best
        (highest test accuracy), as the paper does.
      n_a_grid, n_e_grid: N_a (keys per codebook) and N_e (forget examples) tried by the sweep;
        a value above the keys per codebook or the forget examples there are tries all of them.
        With the defaults, the default model on ResNet-20 CIFAR-10 embeddings (seed 0) reaches
        forget accuracy 0 on the training split for all 10 classes: UvE at N_e = 2,000 of
        4,000 forget rows, UvA at N_a = 64-256 (experiments/results/every_class_resnet20).
      sweep_split: where the sweep measures forget accuracy: ``train`` (the forget training
        examples themselves, default; test data stays for reporting) or ``test``.
      sweep_max_examples: at most this many forget and this many retain rows of the sweep
        split are used (a random subset): the sweep ranks each row's N+1 nearest keys, whose
        memory grows with rows x codebooks x N.
      target: forget accuracy the sweep must reach (paper: 0).
      mask_mode: ``search`` (masked keys leave the nearest-key search) or ``readout``.
      methods: registered unlearning methods to run (:data:`dkvb_jax.unlearning.METHODS`);
        default :data:`~dkvb_jax.unlearning.registry.DEFAULT_METHODS`: ``uva``, ``uve`` and
        ``exact`` (closed-form values from per-pair label counts on the same keys, forgotten by
        subtracting counts: bit-identical to refitting without the class).
      exact_alpha: additive smoothing of the closed-form log-probability values.
      values: ``trained`` (values trained by the value optimiser) or ``counts`` (closed form
        from per-pair label counts: every removal of a training row is exact by subtraction).
      count_estimator: how closed-form values are derived from counts (``log_prob``,
        ``centered_log_prob``, ``prob``; see :class:`dkvb_jax.exact.EstimatorConfig`).
      rank_weights: integer count weight of each of the `top_k` retrieved keys (None: 1 each).
      holdout_fraction: fraction of the training rows held out (stratified, random with
        `seed`) to fit the preprocessing (with their labels) and the keys (without); the values
        never see them. With ``values="counts"`` no frozen part then sees the remaining rows,
        so removing any of them is certified exact. 0: every part is fitted on the training
        rows.
      baselines: optimisation baselines on the linear head, from ``retrain``, ``finetune``,
        ``neggrad+``, ``scrub``.
      dkvb_finetune: also fine-tune the DKVB values on retain data (a baseline on DKVB itself).
      head_epochs: training epochs of the original linear head and of the retrain oracle.
      baseline_max_epochs: epoch cap of fine-tune / NegGrad+ / SCRUB; they run until their
        forget-test accuracy is as low as the DKVB row's they are costed against (within the
        table's tolerance) or to this cap, never stopping on a plateau.
      neggrad_alpha: NegGrad+ retain weight.
      mia: run the membership-inference attack on every row.
      seed: PRNG seed of model init, training, shuffles and the attack.
    """

    num_codebooks: int = 128
    num_keys: int = 512
    key_dim: int = 14
    top_k: int = 1
    preprocess: Kind = "lda"
    key_epochs: int = 10
    key_batch_size: int = 256
    key_max_examples: int | None = None
    value_epochs: int = 5
    value_learning_rate: float = 0.5
    value_batch_size: int = 256
    value_optimizer: Literal["sgd", "adam"] = "adam"
    value_schedule: Literal["constant", "cosine"] = "cosine"
    value_label_smoothing: float = 0.0
    value_clip_norm: float = 0.0
    forget_classes: tuple[int, ...] | None = None
    # The registered methods' default grids: one source for the library's and the config's.
    n_a_grid: tuple[int, ...] = default_grid("n_a")
    n_e_grid: tuple[int, ...] = default_grid("n_e")
    sweep_split: Literal["train", "test"] = "train"
    sweep_max_examples: int = 2000
    target: float = 0.0
    mask_mode: Literal["search", "readout"] = "search"
    methods: tuple[str, ...] = DEFAULT_METHODS
    exact_alpha: float = 1.0
    values: Literal["trained", "counts"] = "counts"
    count_estimator: Literal["log_prob", "centered_log_prob", "prob"] = "log_prob"
    rank_weights: tuple[int, ...] | None = None
    holdout_fraction: float = 0.2
    baselines: tuple[str, ...] = BASELINE_NAMES
    dkvb_finetune: bool = True
    head_epochs: int = 30
    baseline_max_epochs: int = 10
    neggrad_alpha: float = 0.99
    mia: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ExperimentConfig.{name} must be a positive int, got {value!r}.")
        if self.forget_classes is not None:
            fc = tuple(int(c) for c in np.atleast_1d(self.forget_classes))
            if not fc or min(fc) < 0:
                raise ValueError(
                    f"ExperimentConfig.forget_classes must be non-negative class ids or None, "
                    f"got {self.forget_classes!r}."
                )
            object.__setattr__(self, "forget_classes", fc)
        for name in ("n_a_grid", "n_e_grid"):
            grid = tuple(int(n) for n in getattr(self, name))
            if not grid or min(grid) < 1:
                raise ValueError(f"ExperimentConfig.{name} must be positive ints, got {grid!r}.")
            object.__setattr__(self, name, tuple(sorted(set(grid))))
        if self.sweep_split not in ("train", "test"):
            raise ValueError(
                f"ExperimentConfig.sweep_split must be 'train' or 'test', got {self.sweep_split!r}."
            )
        if self.mask_mode not in ("search", "readout"):
            raise ValueError(
                f"ExperimentConfig.mask_mode must be 'search' or 'readout', got {self.mask_mode!r}."
            )
        for name, known in (("methods", tuple(METHODS)), ("baselines", BASELINE_NAMES)):
            values = tuple(getattr(self, name))
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(
                    f"ExperimentConfig.{name} has unknown entries {unknown}; known: {known}."
                )
            object.__setattr__(self, name, values)
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"ExperimentConfig.target must be in [0, 1], got {self.target!r}.")
        if not self.exact_alpha > 0.0:
            raise ValueError(f"ExperimentConfig.exact_alpha must be > 0, got {self.exact_alpha!r}.")
        if self.preprocess not in PREPROCESS_KINDS:
            raise ValueError(
                f"ExperimentConfig.preprocess must be one of {PREPROCESS_KINDS}, got "
                f"{self.preprocess!r}."
            )
        if self.values not in ("trained", "counts"):
            raise ValueError(
                f"ExperimentConfig.values must be 'trained' or 'counts', got {self.values!r}."
            )
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(
                "ExperimentConfig.holdout_fraction must be in [0, 1), got "
                f"{self.holdout_fraction!r}."
            )
        if self.rank_weights is not None:
            object.__setattr__(self, "rank_weights", tuple(self.rank_weights))
        self._train_config()  # ValueTrainConfig checks the training fields, whatever `values`
        self.value_config()

    @classmethod
    def paper(cls, **changes: Any) -> ExperimentConfig:
        """The paper's recipe: standardised inputs, top-1, SGD lr 0.3 for 10 epochs, label
        smoothing 0.1, clipping 1.0 (model size and the rest as the defaults, or `changes`)."""
        return cls.recipe("paper", **changes)

    @classmethod
    def recipe(cls, name: str, **changes: Any) -> ExperimentConfig:
        """A named recipe (see :data:`RECIPES`) with `changes` on top."""
        if name not in RECIPES:
            raise ValueError(f"Unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}.")
        return cls(**{**RECIPES[name], **changes})

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        """From a JSON dict; ``"recipe": "paper"`` starts from :meth:`paper` instead of the
        defaults, and the legacy ``"standardize": true/false`` reads as ``preprocess``."""
        d = dict(d)
        recipe = d.pop("recipe", "default")
        if recipe not in RECIPES:
            raise ValueError(
                f"ExperimentConfig recipe must be one of {', '.join(RECIPES)}, got {recipe!r}."
            )
        if "standardize" in d and "preprocess" not in d:
            d["preprocess"] = "standardize" if d.pop("standardize") else "none"
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown ExperimentConfig fields {unknown}; known: {sorted(known)}.")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls.recipe(recipe, **fields)

    def dkvb_config(self, embed_dim: int, num_classes: int) -> DKVBConfig:
        return DKVBConfig(
            embed_dim=embed_dim,
            num_classes=num_classes,
            num_codebooks=self.num_codebooks,
            num_keys=self.num_keys,
            key_dim=self.key_dim,
            top_k=self.top_k,
        )

    def grid(self, method: str) -> tuple[int, ...]:
        """The sizes a sweep of the registered masking `method` tries: the config's
        ``<size>_grid`` (``n_a_grid``, ``n_e_grid``), else the method's own default grid."""
        size = get_method(method).size
        if size is None:
            raise ValueError(f"{method} has no size parameter to sweep.")
        return getattr(self, f"{size.name}_grid", size.default_grid)

    def stats_config(self) -> exact.StatsConfig:
        return exact.StatsConfig(rank_weights=self.rank_weights)

    def key_config(self) -> KeyInitConfig:
        return KeyInitConfig(epochs=self.key_epochs, batch_size=self.key_batch_size)

    def value_config(self) -> ValueTrainConfig | exact.EstimatorConfig:
        """How values are fitted: the optimiser's settings, or the closed-form estimator."""
        if self.values == "counts":
            return exact.EstimatorConfig(kind=self.count_estimator, alpha=self.exact_alpha)
        return self._train_config()

    def _train_config(self) -> ValueTrainConfig:
        return ValueTrainConfig(
            epochs=self.value_epochs,
            learning_rate=self.value_learning_rate,
            batch_size=self.value_batch_size,
            optimizer=self.value_optimizer,
            schedule=self.value_schedule,
            label_smoothing=self.value_label_smoothing,
            clip_norm=self.value_clip_norm,
        )


# The paper's recipe (Sec. 4 / App. B): what ExperimentConfig.paper() changes from the defaults.
PAPER_RECIPE: dict[str, Any] = dict(
    top_k=1,
    preprocess="standardize",
    value_epochs=10,
    value_learning_rate=0.3,
    value_optimizer="sgd",
    value_schedule="constant",
    value_label_smoothing=0.1,
    value_clip_norm=1.0,
)
# What each named recipe changes from ExperimentConfig's defaults, which are "certified":
# nothing that cannot be subtracted sees the labelled rows D (LDA and keys on a held-out 20%
# of the training split, values from per-pair label counts of the rest), so every removal
# from D is certified exact.
RECIPES: dict[str, dict[str, Any]] = {
    "certified": {},
    "default": {},
    # LDA and keys on every training row, values trained by Adam (the previous default).
    "lda_adam": dict(values="trained", holdout_fraction=0.0),
    "paper": {**PAPER_RECIPE, "values": "trained", "holdout_fraction": 0.0},
}


def parse_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings as changes to :class:`ExperimentConfig` (for ``--set``).

    VALUE is read as JSON when it parses (``6``, ``0.1``, ``[8, 16]``, ``null``, ``true``) and
    as a bare string otherwise (``lda``); a single value given to a tuple field is a one-element
    tuple. A later assignment of the same field wins. Ranges are left to ExperimentConfig.

    Returns:
      {field: value}, each value of the field's type (lists as tuples, ints widened to float).

    Raises:
      ValueError: an assignment without ``=``, a FIELD that ExperimentConfig lacks (the
        message lists the valid fields), or a value of the wrong type for its field.
    """
    hints = typing.get_type_hints(ExperimentConfig)
    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{item!r} is not FIELD=VALUE (e.g. value_epochs=6).")
        if name not in hints:
            raise ValueError(
                f"{name!r} is not an ExperimentConfig field; valid fields: {', '.join(hints)}."
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        hint = hints[name]
        if _tuple_item(hint) is not None and not isinstance(value, list | tuple | None):
            value = [value]
        ok, value = _coerce(value, hint)
        if not ok:
            raise ValueError(
                f"ExperimentConfig.{name} must be {_describe(hint)}, got {text!r} (from {item!r})."
            )
        changes[name] = value
    return changes


def _tuple_item(hint: Any) -> Any:
    """The item type of a ``tuple[T, ...]`` hint, or of its non-None member; else None."""
    for h in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        if typing.get_origin(h) is tuple:
            return typing.get_args(h)[0]
    return None


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value`, parsed from JSON, is of type `hint`; the value as that type)."""
    if isinstance(hint, types.UnionType):
        for h in typing.get_args(hint):
            ok, out = _coerce(value, h)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint) and isinstance(value, str), value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        items = [_coerce(v, typing.get_args(hint)[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if hint is bool:
        return isinstance(value, bool), value
    # JSON gives 6 for 6.0 and a bool is an int to Python: neither is a silent 1 or 1.0 here.
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    return True, value


def _describe(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "ints, e.g. [1, 2]", str: 'strings, e.g. ["a", "b"]'}.get(
            item, _describe(item)
        )
    return {bool: "true or false", int: "an int", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )
