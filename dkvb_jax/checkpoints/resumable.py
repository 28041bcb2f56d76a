"""Value training that checkpoints after every epoch and resumes where it stopped.

`fit_values` runs exactly the core's epochs (:func:`dkvb_jax.training.train_values`: the same
per-epoch PRNG keys, codes and jitted epoch function), saving ``params``, the optimiser state
and the history after each one. Called again on the same directory it restores the latest
complete epoch and continues, so an interrupted run ends bit-identical to an uninterrupted one.
A directory written for another model, training setting, dataset or key is refused.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from dkvb_jax import _validation, parallel
from dkvb_jax._fingerprint import arrays_sha256
from dkvb_jax._progress import note, progress_bar
from dkvb_jax.checkpoints import _orbax
from dkvb_jax.checkpoints._orbax import CheckpointError
from dkvb_jax.model import DKVB
from dkvb_jax.training import values as values_lib
from dkvb_jax.training.codes import compute_codes
from dkvb_jax.training.values import TrainHistory, ValueTrainConfig

FORMAT = "dkvb_jax.fit_values"
ITEMS = ("state", "meta")


def _run_identity(model, variables, x, y, key, config) -> dict:
    """What must match for a resume to continue the same run."""
    return {
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "data": arrays_sha256(x, y),
        "frozen_and_mask": arrays_sha256(
            *jax.tree.leaves((variables["frozen"], variables["mask"]))
        ),
        "initial_params": arrays_sha256(*jax.tree.leaves(variables["params"])),
        "key": arrays_sha256(jax.random.key_data(key)),
    }


def fit_values(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    *,
    key: jax.Array,
    directory: str | pathlib.Path,
    config: ValueTrainConfig | None = None,
    max_to_keep: int = 3,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch_end: Callable[[int, dict, TrainHistory], None] | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> tuple[dict, TrainHistory]:
    """Resumable :func:`dkvb_jax.training.train_values`, checkpointing after each epoch.

    Args:
      model, variables, x, y, key, config, eval_data, progress: as for `train_values`.
      directory: where the per-epoch checkpoints go; if it holds checkpoints of this same run,
        training resumes after the latest one.
      max_to_keep: how many of the newest epoch checkpoints to keep.
      on_epoch_end: called as `on_epoch_end(epoch, variables, history)` after each epoch's
        checkpoint is committed (`epoch` counts from 1).
      mesh: run each epoch data-parallel over this mesh
        (:func:`dkvb_jax.parallel.train_epoch`: gradients averaged over the ``'data'`` axis);
        None runs the core's one-device epoch.

    Returns:
      The trained variables and the full history (restored epochs included).

    Raises:
      CheckpointError: `directory` holds checkpoints of a different run (model, training
        config, data, initial variables or key), or a corrupt checkpoint.
    """
    config = ValueTrainConfig() if config is None else config
    _validation.check_positive_int(max_to_keep, "max_to_keep")
    cfg = model.config
    _validation.check_embeddings(x, cfg.embed_dim, allow_tokens=False)
    _validation.check_labels(y, cfg.num_classes, n=x.shape[0])
    identity = _run_identity(model, variables, x, y, key, config)

    use_codes = cfg.splitter != "learned"
    if mesh is not None:
        size = parallel.data_size(mesh)
        if min(config.batch_size, x.shape[0]) % size:
            raise ValueError(
                f"batch size {min(config.batch_size, x.shape[0])} must be divisible by the {size} "
                "devices of the mesh's 'data' axis; pick a multiple of the data-axis size."
            )
        variables = jax.device_put(variables, parallel.replicated(mesh))
        inputs = parallel.codes(model, variables, x, mesh) if use_codes else (jnp.asarray(x),)
    else:
        inputs = compute_codes(model, variables, x) if use_codes else (jnp.asarray(x),)
    evaluate = values_lib.eval_fn(model, variables, eval_data, use_codes)
    n = x.shape[0]
    batch_size = min(config.batch_size, n)
    tx = config.optimizer_for(steps_per_epoch=-(-n // batch_size))
    opt_state = tx.init(variables["params"])
    if mesh is not None:
        # Scalars such as the step count start on one device; the restore target takes its
        # shardings from this state, so put all of it where the epoch runs.
        opt_state = jax.device_put(opt_state, parallel.replicated(mesh))
    y = jnp.asarray(y, jnp.int32)
    history = TrainHistory([], [], [])
    epoch_keys = jax.random.split(key, config.epochs)

    directory = pathlib.Path(directory)
    with _orbax.manager(directory, ITEMS, max_to_keep=max_to_keep) as mgr:
        start = 0
        if mgr.latest_step() is not None:
            start, params, opt_state, history = _restore(
                mgr, directory, identity, variables["params"], opt_state
            )
            variables = {**variables, "params": params}
        if start and progress:
            note(f"resuming value training from epoch {start} of {config.epochs} ({directory})")
        bar = progress_bar(
            range(start, config.epochs), desc="value training (resumable)", initial=start,
            total=config.epochs, disable=not progress,
        )  # fmt: skip
        for epoch in bar:
            if mesh is None:
                params, opt_state, loss, acc = values_lib._train_epoch(
                    model, use_codes, tx, batch_size, config.label_smoothing,
                    variables, opt_state, inputs, y, epoch_keys[epoch],
                )  # fmt: skip
            else:
                params, opt_state, loss, acc = parallel.train_epoch(
                    model, use_codes, tx, batch_size, config.label_smoothing, mesh,
                    variables, opt_state, inputs, y, epoch_keys[epoch],
                )  # fmt: skip
            variables = {**variables, "params": params}
            values_lib.record_epoch(history, loss, acc, variables, evaluate, config)
            meta = {
                "format": FORMAT,
                "epoch": epoch + 1,
                "identity": identity,
                "history": history._asdict(),
            }
            mgr.save(
                epoch + 1,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                    meta=ocp.args.JsonSave(meta),
                ),
            )
            mgr.wait_until_finished()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, variables, history)
    return variables, history


def _restore(mgr, directory: pathlib.Path, identity: dict, params, opt_state):
    step = _orbax.resolve_step(mgr, directory, None)
    _orbax.check_committed(directory, step, ITEMS)
    where = directory / str(step)
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for unreadable files
        raise CheckpointError(f"Training checkpoint {where} is truncated or corrupt: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a fit_values checkpoint; use an empty directory.")
    saved = meta.get("identity", {})
    differ = sorted(k for k in identity if saved.get(k) != identity[k])
    if differ:
        raise CheckpointError(
            f"{directory} holds checkpoints of a different training run (differs in: "
            f"{', '.join(differ)}). Resume with the same model, config, data, variables and key, "
            "or use a new directory."
        )
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
        {"params": params, "opt_state": opt_state},
    )
    hint = "Delete that step to resume from the one before."
    with _orbax.read_errors(where, "its training state", hint):
        state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
            "state"
        ]
    h = meta["history"]
    history = TrainHistory(list(h["loss"]), list(h["accuracy"]), list(h["eval_accuracy"]))
    return int(meta["epoch"]), state["params"], state["opt_state"], history
