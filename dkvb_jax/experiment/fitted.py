"""A fitted DKVB on disk: the model, its usage histogram, label statistics and run record.

Layout of a checkpoint folder (``dkvb fit``'s): ``model/`` (orbax steps: step 0 the fitted model,
later steps unlearned versions with their audit trail), ``usage.npy`` (per-class histogram),
``stats.npz`` (label statistics of closed-form values, for the latest step), ``run.json`` (what
was run, with every setting that changes the fit), and the fit's resume state ``keys/`` and
``values/``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import checkpoints
from dkvb_jax.config import DKVBConfig
from dkvb_jax.exact import LabelStats
from dkvb_jax.exact.statistics import fingerprint as exact_fingerprint
from dkvb_jax.model import DKVB
from dkvb_jax.provenance import Provenance
from dkvb_jax.training import KeyInitReport, TrainHistory

USAGE_FILE = "usage.npy"
RUN_FILE = "run.json"
STATS_FILE = "stats.npz"
# Resume state of fit_dkvb: the fitted keys and the per-epoch value checkpoints.
RESUME_FOLDERS = ("keys", "values")


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
      provenance: what each data-dependent part was fitted on, recorded by :func:`dkvb_jax.experiment.fit_dkvb`
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


def save_fitted(
    directory: str | pathlib.Path,
    fitted: FittedDKVB,
    *,
    encoder: str | None = None,
    run_info: dict | None = None,
    purge_earlier: bool = False,
) -> int:
    """Saves the model as a new step of ``directory/model`` with its audit trail and histogram.

    Args:
      directory: the checkpoint folder (``dkvb fit``'s layout).
      fitted: the model, its usage histogram, audit trail and provenance.
      encoder: encoder name recorded in the checkpoint.
      run_info: written to ``run.json`` when given.
      purge_earlier: once the new step is committed, delete every earlier step of
        ``directory/model`` (recorded in the step's metadata) and the fitting's resume state
        (``keys/``, ``values/``): all of them hold what later unlearning forgot. See
        :func:`earlier_state` for what a folder still holds.

    Returns:
      The step written.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = checkpoints.save_model(
        directory / "model",
        fitted.config,
        fitted.variables,
        encoder=encoder,
        audit=list(fitted.audit),
        provenance=None if fitted.provenance is None else fitted.provenance.to_dict(),
        purge_earlier=purge_earlier,
    )
    _save_stats(directory / STATS_FILE, fitted.stats, step)
    if purge_earlier:
        for name in RESUME_FOLDERS:
            if (directory / name).exists():
                shutil.rmtree(directory / name)
    np.save(directory / USAGE_FILE, np.asarray(fitted.usage))
    if run_info is not None:
        (directory / RUN_FILE).write_text(json.dumps(run_info, indent=2))
    return step


def earlier_state(directory: str | pathlib.Path) -> dict[str, list]:
    """What a checkpoint folder still holds besides its latest model.

    Returns:
      ``{"model_steps": [...], "folders": [...]}``: the steps of ``directory/model`` before the
      latest one (each is the model as it was before the unlearning calls after it), and which
      of the fitting's resume folders (``keys``, ``values``: fitted keys and per-epoch values
      trained on all the training data) are still there. Both are empty once
      :func:`save_fitted` ran with ``purge_earlier=True``.
    """
    directory = pathlib.Path(directory)
    steps = checkpoints.list_steps(directory / "model")
    return {
        "model_steps": steps[:-1],
        "folders": [name for name in RESUME_FOLDERS if (directory / name).exists()],
    }


def load_fitted(
    directory: str | pathlib.Path, *, config: DKVBConfig | None = None, step: int | None = None
) -> tuple[FittedDKVB, dict]:
    """Restores a model written by :func:`dkvb_jax.experiment.fit_dkvb` / :func:`save_fitted` and its ``run.json``.

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
    provenance = None if restored.provenance is None else Provenance.from_dict(restored.provenance)
    fitted = FittedDKVB(
        DKVB(cfg),
        restored.variables,
        usage,
        audit=tuple(restored.audit),
        provenance=provenance,
        stats=_load_stats(directory / STATS_FILE, restored.step, restored.variables, provenance),
    )
    return fitted, run_info


def _save_stats(path: pathlib.Path, stats: LabelStats | None, step: int) -> None:
    """The label statistics of `step`'s closed-form values (removed when it has none).

    Only the latest step's statistics are kept: they are what later requests subtract from,
    and they no longer hold the rows earlier requests removed.
    """
    if stats is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(
        tmp,
        step=step,
        counts=np.asarray(stats.counts),
        codes=np.asarray(stats.codes),
        labels=np.asarray(stats.labels),
        ids=np.asarray(stats.ids),
        rank_weights=np.asarray(stats.rank_weights),
        fingerprint=np.asarray(stats.fingerprint),
    )
    tmp.replace(path)  # a crash leaves the old file or the new one, never half of one


def _load_stats(path: pathlib.Path, step: int, variables: dict, provenance) -> LabelStats | None:
    """The statistics saved with `step`, or None (trained values, or another step restored)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        if int(f["step"]) != step:
            return None  # they belong to another step: removal from them would not be exact
        stats = LabelStats(
            counts=jnp.asarray(f["counts"]),
            codes=jnp.asarray(f["codes"]),
            labels=jnp.asarray(f["labels"]),
            ids=jnp.asarray(f["ids"]),
            rank_weights=jnp.asarray(f["rank_weights"]),
            provenance=provenance,
            fingerprint=str(f["fingerprint"]),
        )
    if stats.fingerprint != exact_fingerprint(variables):
        raise checkpoints.CheckpointError(
            f"{path} was counted under other keys than step {step} of the model holds; the "
            "folder mixes files of different fits. Refit into a new folder."
        )
    return stats


def restore_final(directory: pathlib.Path, config: DKVBConfig) -> FittedDKVB | None:
    """The finished fit of a folder whose settings match, or None when it is not finished."""
    steps = checkpoints.list_steps(directory / "model")
    if not steps:
        return None
    # step 0 is the fitted model; later steps are unlearned versions of it.
    if steps[0] != 0:
        raise checkpoints.CheckpointError(
            f"{directory / 'model'} no longer holds the fitted model: step 0 was purged after "
            f"unlearning (steps left: {steps}). Fit into a new checkpoint folder."
        )
    fitted, _ = load_fitted(directory, config=config, step=0)
    if fitted.audit:
        raise checkpoints.CheckpointError(
            f"Step 0 of {directory / 'model'} is an unlearned model ({len(fitted.audit)} "
            "unlearning call(s) applied, e.g. a 'dkvb unlearn --out' folder), not a fitted one. "
            "Fit into a new checkpoint folder."
        )
    return fitted
