"""Fitting a DKVB model on cached embeddings: keys on unlabelled data, then values, resumably.

The embeddings are preprocessed before the keys are fitted, because a random projection of raw
post-ReLU features puts most queries in a thin shell and wastes keys: standardised with the key
data's per-dimension mean and std (the paper's setting here), or projected onto the labelled
data's linear discriminants (``preprocess="lda"``, the experiment default, issue 10). Either map
is *folded into the frozen variables* (`dkvb_jax.model.preprocess`); for standardisation: with
``q = ((x - mu) / sd) @ P`` the model stores ``P' = P / sd`` and shifts every key by
``(mu / sd) @ P``, so the nearest key of ``x @ P'`` among the shifted keys is the nearest key of
``q`` among the original ones. The saved model therefore reads raw embeddings and needs no
preprocessing state besides its own variables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import checkpoints, exact
from dkvb_jax.config import DKVBConfig
from dkvb_jax.data.registry import drawn_from
from dkvb_jax.encoders.registry import encoder_provenance
from dkvb_jax.exact import EstimatorConfig, LabelStats, StatsConfig
from dkvb_jax.model import DKVB
from dkvb_jax.model.preprocess import KINDS, Kind, fit_affine, fold_affine
from dkvb_jax.provenance import UNNAMED, Part, Provenance, Rows
from dkvb_jax.training import (
    KeyInitConfig,
    KeyInitReport,
    TrainHistory,
    ValueTrainConfig,
    fit_keys,
    key_usage,
    train_values,
)

DEFAULT_KEY_CONFIG = KeyInitConfig()
DEFAULT_VALUE_CONFIG = ValueTrainConfig()
USAGE_FILE = "usage.npy"
RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class FittedDKVB:
    """A trained DKVB model and what unlearning needs from its training.

    Attributes:
      model: the module.
      variables: its variables (keys fitted and frozen, values trained); read raw embeddings.
      usage: per-class key-usage histogram on the training data, int32 `[classes, codebooks,
        keys]`, stored at training time so that UvA on a class needs no data pass.
      key_report: per-epoch key quality (None when restored from a checkpoint).
      history: value-training history (None when restored from a checkpoint).
      audit: unlearning records applied so far (empty for a freshly fitted model).
      provenance: what each data-dependent part was fitted on, recorded by :func:`fit_dkvb`
        (None when unknown, e.g. a checkpoint written before provenance was recorded).
      stats: the label statistics of closed-form values (None for trained values): exact
        removal subtracts from them, with no data pass.
    """

    model: DKVB
    variables: dict
    usage: jax.Array
    key_report: KeyInitReport | None = None
    history: TrainHistory | None = None
    audit: tuple = ()
    provenance: Provenance | None = None
    stats: LabelStats | None = None

    @property
    def config(self) -> DKVBConfig:
        return self.model.config


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std `[embed_dim]` of `x`; constant dimensions get std 1."""
    x = np.asarray(x, np.float64)
    mu, sd = x.mean(0), x.std(0)
    return mu.astype(np.float32), np.where(sd > 1e-6, sd, 1.0).astype(np.float32)


def fold_standardization(variables: dict, mu: np.ndarray, sd: np.ndarray) -> dict:
    """Variables that read raw `x` as the given ones read `(x - mu) / sd` (see module docstring).

    Only the random-projection splitter has a projection to fold into.
    """
    frozen = variables["frozen"]
    if "projection" not in frozen:
        raise ValueError(
            "fold_standardization needs the random_projection splitter (a 'projection' to fold "
            "the standardisation into); use ExperimentConfig(preprocess='none') with other "
            "splitters."
        )
    proj = jnp.asarray(frozen["projection"])
    shift = jnp.einsum("D,Dcd->cd", jnp.asarray(mu / sd), proj, precision="highest")
    new_frozen = {
        **frozen,
        "projection": proj / jnp.asarray(sd)[:, None, None],
        "keys": frozen["keys"] + shift[:, None, :],
    }
    return {**variables, "frozen": new_frozen}


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
        are saved there; a rerun with the same inputs resumes and skips finished phases.
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
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != config.embed_dim:
        raise ValueError(
            f"x must be [n, {config.embed_dim}] embeddings for this config, got {x.shape}."
        )
    keys_on_x = key_data is None
    key_data = x if keys_on_x else np.asarray(key_data, np.float32)
    if key_data.ndim != 2 or key_data.shape[1] != config.embed_dim:
        raise ValueError(
            f"key_data must be [m, {config.embed_dim}] embeddings like x, got {key_data.shape}; "
            "keys must be fitted on embeddings of the same encoder."
        )
    if preprocess not in KINDS:
        raise ValueError(f"fit_dkvb: preprocess must be one of {KINDS}, got {preprocess!r}.")
    provenance = _provenance(
        x, dataset, ids, encoder, None if keys_on_x else key_rows, keys_on_x, preprocess,
        preprocess_data, preprocess_rows, value_config,
    )
    k_init, k_keys, k_values = jax.random.split(key, 3)
    ckpt = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
    data_id = data_fingerprint(x, y, key_data)
    run_info = {**(run_info or {}), "data_fingerprint": data_id}
    if ckpt is not None:
        done = _restore_final(ckpt, config, data_id)
        if done is not None:
            return done
    model, variables = build_model(config, k_init)
    report = None
    keys_dir = None if ckpt is None else ckpt / "keys"
    if keys_dir is not None and checkpoints.list_steps(keys_dir):
        variables = checkpoints.restore_model(keys_dir, config=config).variables
    else:
        if preprocess == "standardize":
            mu, sd = standardizer(key_data)
            variables, report = fit_keys(
                model, variables, (key_data - mu) / sd, key=k_keys, config=key_config,
                progress=progress,
            )  # fmt: skip
            variables = fold_standardization(variables, mu, sd)
        else:
            if preprocess != "none":
                # Folded first: the keys are then fitted on the model's own queries.
                labelled = preprocess == "lda"
                lda_x, lda_y = (x, y) if preprocess_data is None else preprocess_data
                affine = fit_affine(
                    np.asarray(lda_x, np.float32) if labelled else key_data,
                    preprocess,
                    labels=np.asarray(lda_y) if labelled else None,
                )
                variables = fold_affine(variables, affine)
            variables, report = fit_keys(
                model, variables, key_data, key=k_keys, config=key_config, progress=progress
            )
        if keys_dir is not None:
            checkpoints.save_model(keys_dir, config, variables, encoder=encoder)
    stats = None
    if isinstance(value_config, EstimatorConfig):
        # Closed form from per-pair label counts: every removal is a subtraction.
        variables, stats = exact.fit_exact(
            model, variables, x, y, ids, estimator=value_config,
            stats_config=stats_config or exact.StatsConfig(), provenance=provenance,
        )  # fmt: skip
        history = None
        provenance = stats.provenance
    elif ckpt is None:
        variables, history = train_values(
            model, variables, x, y, key=k_values, config=value_config, eval_data=eval_data,
            progress=progress,
        )  # fmt: skip
    else:
        variables, history = checkpoints.fit_values(
            model, variables, x, y, key=k_values, directory=ckpt / "values",
            config=value_config, eval_data=eval_data, progress=progress,
        )  # fmt: skip
    usage = key_usage(model, variables, x, y)
    fitted = FittedDKVB(
        model, variables, usage, report, history, provenance=provenance, stats=stats
    )
    if ckpt is not None:
        save_fitted(ckpt, fitted, encoder=encoder, run_info=run_info)
    return fitted


def save_fitted(
    directory: str | pathlib.Path,
    fitted: FittedDKVB,
    *,
    encoder: str | None = None,
    run_info: dict | None = None,
) -> int:
    """Saves the model as a new step of ``directory/model`` with its audit trail and histogram."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = checkpoints.save_model(
        directory / "model", fitted.config, fitted.variables, encoder=encoder,
        audit=list(fitted.audit),
    )  # fmt: skip
    np.save(directory / USAGE_FILE, np.asarray(fitted.usage))
    if run_info is not None:
        (directory / RUN_FILE).write_text(json.dumps(run_info, indent=2))
    return step


def load_fitted(
    directory: str | pathlib.Path, *, config: DKVBConfig | None = None, step: int | None = None
) -> tuple[FittedDKVB, dict]:
    """Restores a model written by :func:`fit_dkvb` / :func:`save_fitted` and its ``run.json``.

    Raises:
      FileNotFoundError: not a checkpoint folder of this layout.
      CheckpointError (ValueError): a checkpoint of another configuration, or a damaged one.
    """
    directory = pathlib.Path(directory)
    if not (directory / "model").is_dir():
        raise FileNotFoundError(
            f"{directory} is not a dkvb checkpoint folder (no 'model' subfolder); pass the "
            "--checkpoint folder written by 'dkvb fit'."
        )
    restored = checkpoints.restore_model(directory / "model", config=config, step=step)
    usage_path = directory / USAGE_FILE
    if not usage_path.is_file():
        raise FileNotFoundError(f"{usage_path} is missing: the per-class usage histogram.")
    usage = jnp.asarray(np.load(usage_path))
    cfg = restored.config
    want = (cfg.num_classes, cfg.num_codebooks, cfg.num_keys)
    if tuple(usage.shape) != want:
        raise ValueError(
            f"{usage_path} has shape {tuple(usage.shape)}, but the model needs {want}; the "
            "folder mixes files of different models."
        )
    run_path = directory / RUN_FILE
    run_info = json.loads(run_path.read_text()) if run_path.is_file() else {}
    if restored.encoder is not None:
        run_info.setdefault("encoder", restored.encoder)
    fitted = FittedDKVB(DKVB(cfg), restored.variables, usage, audit=tuple(restored.audit))
    return fitted, run_info


def data_fingerprint(*arrays) -> str:
    """sha256 of arrays (dtype, shape, bytes): identifies the data a checkpoint was fitted on."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _restore_final(directory: pathlib.Path, config: DKVBConfig, data_id: str) -> FittedDKVB | None:
    if not checkpoints.list_steps(directory / "model"):
        return None
    # step 0 is the fitted model; later steps are unlearned versions of it.
    fitted, info = load_fitted(directory, config=config, step=0)
    if info.get("data_fingerprint") not in (None, data_id):
        raise ValueError(
            f"{directory} holds a model fitted on other data (fingerprint differs); use a new "
            "checkpoint folder, or the same embeddings as before."
        )
    return fitted


def _provenance(
    x, dataset, ids, encoder, key_rows, keys_on_x, preprocess, preprocess_data,
    preprocess_rows, value_config,
) -> Provenance:
    """What :func:`fit_dkvb` fits each part on, recorded before it fits them."""
    n = len(x)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must give one row id per row of x ({n}), got shape {ids.shape}.")
    if preprocess_data is not None:
        if preprocess != "lda":
            raise ValueError(
                f"preprocess_data is fitted by 'lda' only; preprocess={preprocess!r} fits on the "
                "key data."
            )
        if not isinstance(preprocess_rows, Rows):
            raise ValueError(
                "preprocess_data needs preprocess_rows (a dkvb_jax.provenance.Rows naming its "
                "rows), so that certificates can tell whether it holds forgotten rows."
            )
    data = dataset or UNNAMED
    labelled = Rows(data, ids, labels=True)
    if dataset is None:
        # The encoder's training data cannot be compared with rows that have no name.
        enc = Part("encoder", encoder_provenance(encoder).method, None)
    else:
        enc = encoder_provenance(encoder)
    keys = (Rows(data, ids),) if keys_on_x else (None if key_rows is None else (key_rows,))
    if preprocess == "lda":
        pre = (labelled,) if preprocess_data is None else (preprocess_rows,)
    elif preprocess == "none":
        pre = ()
    else:  # statistics of the key data
        pre = keys
    optimizer = getattr(value_config, "optimizer", "label_counts")
    within = drawn_from(data)
    return Provenance(
        data,
        (
            enc,
            Part("preprocess", preprocess, pre),
            Part("keys", "ema_kmeans", keys),
            Part("values", optimizer, (labelled,)),
        ),
        data_within=within,
    )
