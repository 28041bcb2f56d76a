"""Fitting a DKVB model on cached embeddings: keys on unlabelled data, then values, resumably.

The embeddings are preprocessed before the keys are fitted, because a random projection of raw
post-ReLU features puts most queries in a thin shell and wastes keys: standardised with the key
data's per-dimension mean and std (the paper's setting here), or projected onto the labelled
data's linear discriminants (``preprocess="lda"``, the experiment default). Either map
is *folded into the frozen variables* (`dkvb_jax.model.preprocess`); for standardisation: with
``q = ((x - mu) / sd) @ P`` the model stores ``P' = P / sd`` and shifts every key by
``(mu / sd) @ P``, so the nearest key of ``x @ P'`` among the shifted keys is the nearest key of
``q`` among the original ones. The saved model therefore reads raw embeddings and needs no
preprocessing state besides its own variables.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import checkpoints, exact
from dkvb_jax._fingerprint import arrays_sha256
from dkvb_jax._progress import note
from dkvb_jax.config import DKVBConfig
from dkvb_jax.data.registry import drawn_from
from dkvb_jax.encoders.registry import encoder_provenance
from dkvb_jax.exact import EstimatorConfig, StatsConfig
from dkvb_jax.experiment.fitted import (
    RESUME_FOLDERS,
    RUN_FILE,
    FittedDKVB,
    restore_final,
    save_fitted,
)
from dkvb_jax.model import DKVB
from dkvb_jax.model.preprocess import KINDS, Affine, Kind, fit_affine, fold_affine
from dkvb_jax.provenance import UNNAMED, Part, Provenance, Rows
from dkvb_jax.training import (
    KeyInitConfig,
    KeyInitReport,
    ValueTrainConfig,
    fit_keys,
    key_usage,
    train_values,
)

DEFAULT_KEY_CONFIG = KeyInitConfig()
DEFAULT_VALUE_CONFIG = ValueTrainConfig()
SETTINGS = "fit_settings"  # run.json entry: every setting that changes what fit_dkvb returns


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std `[embed_dim]` of `x`; constant dimensions get std 1."""
    x = np.asarray(x, np.float64)
    mu, sd = x.mean(0), x.std(0)
    return mu.astype(np.float32), np.where(sd > 1e-6, sd, 1.0).astype(np.float32)


def build_model(config: DKVBConfig, key: jax.Array) -> tuple[DKVB, dict]:
    """The module and its initial variables (random projection and keys, zero values)."""
    model = DKVB(config)
    variables = model.init(key, jnp.zeros((1, config.embed_dim), jnp.float32))
    return model, jax.tree.map(jnp.asarray, dict(variables))


def fit_dkvb(
    config: DKVBConfig,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    key_data: np.ndarray | None = None,
    key_config: KeyInitConfig = DEFAULT_KEY_CONFIG,
    value_config: ValueTrainConfig | EstimatorConfig = DEFAULT_VALUE_CONFIG,
    stats_config: StatsConfig | None = None,
    preprocess: Kind = "standardize",
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    encoder: str | None = None,
    run_info: dict | None = None,
    progress: bool = True,
    dataset: str | None = None,
    ids: np.ndarray | None = None,
    key_rows: Rows | None = None,
    preprocess_data: tuple[np.ndarray, np.ndarray] | None = None,
    preprocess_rows: Rows | None = None,
) -> FittedDKVB:
    """Fits keys on unlabelled data, trains values on `(x, y)`, stores the usage histogram.

    Args:
      config: the model configuration (``embed_dim`` must match `x`).
      x, y: labelled training embeddings `[n, embed_dim]` and int labels `[n]`.
      key: PRNG key (model init, key fitting, value training).
      key_data: unlabelled embeddings for the keys (the paper: another dataset); default `x`.
      key_config, value_config: the two training phases; an
        :class:`~dkvb_jax.exact.EstimatorConfig` as `value_config` derives the values in closed
        form from per-pair label counts (``fitted.stats``), so that removing any row of
        `(x, y)` is exact by construction.
      stats_config: how closed-form values count examples (top-k rank weights).
      preprocess: input map folded into the projection before the keys are fitted:
        ``standardize`` (the key data's per-dimension statistics), ``lda`` (the discriminant
        subspace of the labelled `(x, y)`: every codebook's cells become nearly class-pure,
        which keeps UvA cheap on an accurate model; the frozen state then depends on every
        labelled row), ``pca_whiten`` (key data) or ``none``.
      eval_data: optional `(x_test, y_test)` reported per value-training epoch.
      checkpoint_dir: if given, the fitted keys, every value-training epoch and the final model
        are saved there, and every setting above that changes the result (the data, key data,
        PRNG key, configs and preprocessing) is recorded in its ``run.json``. A rerun with the
        same settings resumes and skips finished phases; a folder fitted with any other
        setting is refused (:class:`~dkvb_jax.checkpoints.CheckpointError` naming them).
      encoder: encoder name recorded in the checkpoint.
      run_info: JSON-serialisable description stored beside the checkpoint (``run.json``).
      progress: progress bars.
      dataset: row namespace of `(x, y)`, e.g. ``"cifar10/train"``; recorded in the provenance.
        Without it no removal is certified: the encoder's training data cannot be compared.
      ids: row ids of `x` in `dataset` `[n]` (default ``0..n-1``).
      key_rows: the rows `key_data` are (default: `(x, y)`'s rows when `key_data` is None;
        unrecorded, so nothing is certified, when `key_data` is given without them).
      preprocess_data: labelled `(x, y)` to fit ``lda`` on instead of the training data, e.g.
        a held-out split, so that the projection never sees the rows that may be forgotten.
      preprocess_rows: the rows of `preprocess_data` (required with it).

    Returns:
      The fitted model, with its :class:`~dkvb_jax.provenance.Provenance`.
    """
    data = _FitData.checked(
        config,
        x,
        y,
        key_data,
        dataset=dataset,
        ids=ids,
        encoder=encoder,
        key_rows=key_rows,
        preprocess=preprocess,
        preprocess_data=preprocess_data,
        preprocess_rows=preprocess_rows,
    )
    provenance = data.provenance(value_config)
    if not isinstance(value_config, EstimatorConfig):
        stats_config = None  # only closed-form values count examples
    settings = fit_settings(
        config,
        data,
        key=key,
        key_config=key_config,
        value_config=value_config,
        stats_config=stats_config,
    )
    run_info = {**(run_info or {}), "data_fingerprint": data.fingerprint(), SETTINGS: settings}
    ckpt = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
    if ckpt is not None:
        _claim_folder(ckpt, settings, run_info)
        done = restore_final(ckpt, config)
        if done is not None:
            return done
    k_init, k_keys, k_values = jax.random.split(key, 3)
    model, variables = build_model(config, k_init)
    keys_dir = None if ckpt is None else ckpt / "keys"
    variables, report = _fit_frozen(model, variables, data, k_keys, key_config, keys_dir, progress)
    variables, history, stats, provenance = _fit_values(
        model,
        variables,
        data,
        value_config,
        stats_config,
        provenance,
        k_values,
        eval_data,
        progress,
        None if ckpt is None else ckpt / "values",
    )
    usage = key_usage(model, variables, data.x, data.y)
    fitted = FittedDKVB(
        model, variables, usage, report, history, provenance=provenance, stats=stats
    )
    if ckpt is not None:
        save_fitted(ckpt, fitted, encoder=encoder, run_info=run_info)
    return fitted


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FitData:
    """What :func:`fit_dkvb` fits each part on: the arrays, and the rows the caller named.

    The provenance record, the run settings and the frozen and value steps all read these
    together (the arguments of the same names of :func:`fit_dkvb`).
    """

    x: np.ndarray  # [n, embed_dim] float32, labelled
    y: np.ndarray  # [n] int labels
    key_data: np.ndarray  # [m, embed_dim] float32; `x` itself when keys_on_x
    keys_on_x: bool  # no key data was given: the keys are fitted on the labelled rows
    dataset: str | None
    ids: np.ndarray | None
    encoder: str | None
    key_rows: Rows | None
    preprocess: Kind
    preprocess_data: tuple[np.ndarray, np.ndarray] | None
    preprocess_rows: Rows | None

    @classmethod
    def checked(cls, config: DKVBConfig, x, y, key_data, **names) -> _FitData:
        """Checks the embeddings against `config` and the preprocessing kind."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != config.embed_dim:
            raise ValueError(
                f"x must be [n, {config.embed_dim}] embeddings for this config, got {x.shape}."
            )
        keys_on_x = key_data is None
        key_data = x if keys_on_x else np.asarray(key_data, np.float32)
        if key_data.ndim != 2 or key_data.shape[1] != config.embed_dim:
            raise ValueError(
                f"key_data must be [m, {config.embed_dim}] embeddings like x, got "
                f"{key_data.shape}; keys must be fitted on embeddings of the same encoder."
            )
        if names["preprocess"] not in KINDS:
            raise ValueError(
                f"fit_dkvb: preprocess must be one of {KINDS}, got {names['preprocess']!r}."
            )
        return cls(x=x, y=y, key_data=key_data, keys_on_x=keys_on_x, **names)

    def fingerprint(self) -> str:
        """sha256 of the labelled data and the key data."""
        return arrays_sha256(self.x, self.y, self.key_data)

    def record(self) -> dict[str, Any]:
        """What the provenance is derived from besides the arrays, as JSON (ids as digests)."""
        return {
            "dataset": self.dataset,
            "encoder": self.encoder,
            "ids": None if self.ids is None else arrays_sha256(np.asarray(self.ids)),
            "key_rows": None if self.key_rows is None else self.key_rows.digest,
            "preprocess_rows": None
            if self.preprocess_rows is None
            else self.preprocess_rows.digest,
        }

    def provenance(self, value_config) -> Provenance:
        """What each part is fitted on, recorded before it is fitted."""
        n, preprocess, preprocess_data = len(self.x), self.preprocess, self.preprocess_data
        ids = np.arange(n) if self.ids is None else np.asarray(self.ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must give one row id per row of x ({n}), got shape {ids.shape}.")
        if preprocess_data is not None:
            if preprocess != "lda":
                raise ValueError(
                    f"preprocess_data is fitted by 'lda' only; preprocess={preprocess!r} fits on "
                    "the key data."
                )
            if not isinstance(self.preprocess_rows, Rows):
                raise ValueError(
                    "preprocess_data needs preprocess_rows (a dkvb_jax.provenance.Rows naming "
                    "its rows), so that certificates can tell whether it holds forgotten rows."
                )
        data = self.dataset or UNNAMED
        labelled = Rows(data, ids, labels=True)
        if self.dataset is None:
            # The encoder's training data cannot be compared with rows that have no name.
            enc = Part("encoder", encoder_provenance(self.encoder).method, None)
        else:
            enc = encoder_provenance(self.encoder)
        if self.keys_on_x:
            keys = (Rows(data, ids),)
        else:  # key rows not named: unrecorded, so nothing is certified
            keys = None if self.key_rows is None else (self.key_rows,)
        if preprocess == "lda":
            pre = (labelled,) if preprocess_data is None else (self.preprocess_rows,)
        elif preprocess == "none":
            pre = ()
        else:  # statistics of the key data
            pre = keys
        optimizer = getattr(value_config, "optimizer", "label_counts")
        return Provenance(
            data,
            (
                enc,
                Part("preprocess", preprocess, pre),
                Part("keys", "ema_kmeans", keys),
                Part("values", optimizer, (labelled,)),
            ),
            data_within=drawn_from(data),
        )


def _fit_frozen(
    model: DKVB,
    variables: dict,
    data: _FitData,
    key: jax.Array,
    config: KeyInitConfig,
    keys_dir: pathlib.Path | None,
    progress: bool,
) -> tuple[dict, KeyInitReport | None]:
    """The frozen part: the input map folded into the projection, then the keys (resumable)."""
    if keys_dir is not None and checkpoints.list_steps(keys_dir):
        variables = checkpoints.restore_model(keys_dir, config=model.config).variables
        if progress:
            note(f"resuming: keys restored from {keys_dir}")
        return variables, None
    preprocess, key_data = data.preprocess, data.key_data
    if preprocess == "standardize":
        mu, sd = standardizer(key_data)
        variables, report = fit_keys(
            model, variables, (key_data - mu) / sd, key=key, config=config, progress=progress
        )
        # The diagonal case of the affine fold: (x - mu) * (1 / sd).
        variables = fold_affine(variables, Affine(mu, (1.0 / sd).astype(np.float32)))
    else:
        if preprocess != "none":
            # Folded first: the keys are then fitted on the model's own queries.
            labelled = preprocess == "lda"
            lda_x, lda_y = (
                (data.x, data.y) if data.preprocess_data is None else data.preprocess_data
            )
            affine = fit_affine(
                np.asarray(lda_x, np.float32) if labelled else key_data,
                preprocess,
                labels=np.asarray(lda_y) if labelled else None,
            )
            variables = fold_affine(variables, affine)
        variables, report = fit_keys(
            model, variables, key_data, key=key, config=config, progress=progress
        )
    if keys_dir is not None:
        checkpoints.save_model(keys_dir, model.config, variables, encoder=data.encoder)
    return variables, report


def _fit_values(
    model: DKVB,
    variables: dict,
    data: _FitData,
    config: ValueTrainConfig | EstimatorConfig,
    stats_config: StatsConfig | None,
    provenance: Provenance,
    key: jax.Array,
    eval_data: tuple[np.ndarray, np.ndarray] | None,
    progress: bool,
    values_dir: pathlib.Path | None,
) -> tuple[dict, Any, exact.LabelStats | None, Provenance]:
    """The values on the fitted keys: closed form from label counts, or trained (resumably).

    Returns:
      The variables, the training history (None in closed form), the label statistics (None
      when trained) and the provenance (the statistics' own in closed form).
    """
    if isinstance(config, EstimatorConfig):
        # Closed form from per-pair label counts: every removal is a subtraction.
        variables, stats = exact.fit_exact(
            model,
            variables,
            data.x,
            data.y,
            data.ids,
            estimator=config,
            stats_config=stats_config or exact.StatsConfig(),
            provenance=provenance,
        )
        return variables, None, stats, stats.provenance
    variables, history = train_values(
        model,
        variables,
        data.x,
        data.y,
        key=key,
        config=config,
        eval_data=eval_data,
        progress=progress,
        checkpoint_dir=values_dir,
    )
    return variables, history, None, provenance


def fit_settings(
    config: DKVBConfig,
    data: _FitData,
    *,
    key: jax.Array,
    key_config: KeyInitConfig,
    value_config: ValueTrainConfig | EstimatorConfig,
    stats_config: StatsConfig | None = None,
) -> dict[str, Any]:
    """Every input of :func:`fit_dkvb` that changes its result or its record, as JSON (data as
    sha256)."""
    if jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key_json = {
            "impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).tolist(),
        }
    else:  # a raw uint32 key
        key_json = {"impl": "raw", "data": np.asarray(key).tolist()}
    pre = data.preprocess_data
    settings = {
        "model_config": config.to_dict(),
        "key_config": dataclasses.asdict(key_config),
        "value_config": dataclasses.asdict(value_config),
        "preprocess": data.preprocess,
        "key": key_json,
        "data": arrays_sha256(data.x, np.asarray(data.y)),
        "key_data": arrays_sha256(data.key_data),
        "values": type(value_config).__name__,
        "stats_config": None if stats_config is None else dataclasses.asdict(stats_config),
        "preprocess_data": None
        if pre is None
        else arrays_sha256(np.asarray(pre[0], np.float32), pre[1]),
        # What the provenance record is built from (it is derived from these and the above).
        "record": data.record(),
    }
    return json.loads(json.dumps(settings))


def _settings_diff(saved: dict, wanted: dict) -> list[str]:
    """``"value_config.epochs: saved 5, requested 6"`` for every setting that differs."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict) or not d:
            return {prefix: d}
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}"))
        return out

    def show(name: str, value: Any) -> str:
        if name in ("data", "key_data") and isinstance(value, str):
            return f"sha256 {value[:12]}"
        return "(absent)" if value is _ABSENT else json.dumps(value)

    a, b = flat(saved), flat(wanted)
    return [
        f"{k}: saved {show(k, a.get(k, _ABSENT))}, requested {show(k, b.get(k, _ABSENT))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    ]


_ABSENT = object()


def _claim_folder(directory: pathlib.Path, settings: dict, run_info: dict) -> None:
    """Refuses a checkpoint folder fitted with other settings; records them in a fresh one.

    The settings go into ``run.json`` before anything is fitted, so the partial ``keys/`` and
    ``values/`` of an interrupted run are tied to them too.
    """
    run_path = directory / RUN_FILE
    saved = None
    if run_path.is_file():
        try:
            saved = json.loads(run_path.read_text()).get(SETTINGS)
        except (ValueError, AttributeError) as e:
            raise checkpoints.CheckpointError(
                f"{run_path} is not a readable run description ({e}); use a new checkpoint folder."
            ) from e
    if saved is None:
        held = [n for n in ("model", *RESUME_FOLDERS) if (directory / n).exists()]
        if held:
            raise checkpoints.CheckpointError(
                f"{directory} holds a fit ({', '.join(held)}) without a record of the settings "
                f"it was fitted with (an older dkvb_jax, or no {RUN_FILE}), so it cannot be "
                "checked against this request. Use a new checkpoint folder."
            )
        directory.mkdir(parents=True, exist_ok=True)
        run_path.write_text(json.dumps(run_info, indent=2))
        return
    differ = _settings_diff(saved, settings)
    if differ:
        raise checkpoints.CheckpointError(
            f"{directory} holds a model fitted with other settings ({'; '.join(differ)}). "
            "Use a new checkpoint folder, or the settings it was fitted with."
        )
