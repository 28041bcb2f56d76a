"""Per-epoch training checkpoints that let value training resume where it stopped.

:func:`dkvb_jax.training.train_values` (``checkpoint_dir=...``) saves ``params``, the optimiser
state and the history after every epoch through :class:`EpochCheckpoints`; called again on the
same directory it restores the latest complete epoch and continues, so an interrupted run ends
bit-identical to an uninterrupted one. A directory written for another model, training
setting, dataset or key is refused. This module holds the storage only; the loop is the
trainer's.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from dkvb_jax._fingerprint import arrays_sha256
from dkvb_jax.checkpoints import _orbax
from dkvb_jax.checkpoints._orbax import CheckpointError

# Kept from when resumable training was `fit_values`, so its directories still resume.
FORMAT = "dkvb_jax.fit_values"
ITEMS = ("state", "meta")


def run_identity(model, variables: dict, x, y, key: jax.Array, config) -> dict:
    """What must match for a resume to continue the same run (host data `x`, `y`).

    Args:
      model: the DKVB module (its config is recorded).
      variables: the variables training starts from.
      x, y: the rows trained on, `[n, embed_dim]` and `[n]`.
      key: the training PRNG key.
      config: the (dataclass) training settings.
    """
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


class EpochCheckpoints:
    """A context manager over one run's per-epoch checkpoints; inert without a directory.

    Args:
      directory: where the checkpoints go, or None to checkpoint nothing.
      identity: :func:`run_identity` of the run (None without a directory).
      max_to_keep: how many of the newest epoch checkpoints to keep.
    """

    def __init__(
        self, directory: str | pathlib.Path | None, identity: dict | None, *, max_to_keep: int = 3
    ):
        self.directory = None if directory is None else pathlib.Path(directory)
        self.identity = identity
        self.max_to_keep = max_to_keep
        self._mgr = None

    def __enter__(self) -> EpochCheckpoints:
        if self.directory is not None:
            self._mgr = _orbax.manager(self.directory, ITEMS, max_to_keep=self.max_to_keep)
            self._mgr.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mgr is not None:
            self._mgr.__exit__(*exc)
            self._mgr = None

    def restore(self, params: Any, opt_state: Any) -> tuple[int, Any, Any, dict | None]:
        """The latest epoch's state, or the given one when there is nothing to resume.

        Args:
          params, opt_state: the starting state; its shapes, dtypes and shardings are the
            restore target.

        Returns:
          `(epochs done, params, opt_state, history dict or None)`.

        Raises:
          CheckpointError: the directory holds another run's checkpoints or a corrupt one.
        """
        if self._mgr is None or self._mgr.latest_step() is None:
            return 0, params, opt_state, None
        mgr, directory = self._mgr, self.directory
        step = _orbax.resolve_step(mgr, directory, None)
        _orbax.check_committed(directory, step, ITEMS)
        where = directory / str(step)
        try:
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"Training checkpoint {where} is truncated or corrupt: {e}"
            ) from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{where} is not a value-training checkpoint (train_values(checkpoint_dir=...)); "
                "use an empty directory."
            )
        saved = meta.get("identity", {})
        differ = sorted(k for k in self.identity if saved.get(k) != self.identity[k])
        if differ:
            raise CheckpointError(
                f"{directory} holds checkpoints of a different training run (differs in: "
                f"{', '.join(differ)}). Resume with the same model, config, data, variables and "
                "key, or use a new directory."
            )
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
            {"params": params, "opt_state": opt_state},
        )
        hint = "Delete that step to resume from the one before."
        with _orbax.read_errors(where, "its training state", hint):
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
            state = mgr.restore(step, args=args)["state"]
        h = meta["history"]
        history = {k: list(h[k]) for k in ("loss", "accuracy", "eval_accuracy")}
        return int(meta["epoch"]), state["params"], state["opt_state"], history

    def save(self, epoch: int, params: Any, opt_state: Any, history: dict) -> None:
        """Commits the state after `epoch` (counted from 1); a no-op without a directory."""
        if self._mgr is None:
            return
        meta = {"format": FORMAT, "epoch": epoch, "identity": self.identity, "history": history}
        self._mgr.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self._mgr.wait_until_finished()
