"""The ``dkvb`` command line (``dkvb_jax.cli.main.main``), one module per command group.

``main`` (entry point and exit statuses), ``parser`` (every command's arguments), ``fit``
(embed, fit, evaluate), ``unlearn``, ``compare`` (compare, demo), and what they share:
``embeddings`` (where a command's embeddings come from), ``config`` (--config, flags, --set) and
``common`` (errors and output). The argument and config helpers that experiment scripts reuse
are re-exported here; the ``main`` submodule is not, so it is not shadowed by its function.
"""

from dkvb_jax.cli.common import machine_info
from dkvb_jax.cli.config import apply_config_defaults, experiment_config
from dkvb_jax.cli.embeddings import key_data_of, key_rows_of, load_embeddings, train_namespace
from dkvb_jax.cli.parser import add_common_args, add_data_args, add_model_args

__all__ = [
    "add_common_args",
    "add_data_args",
    "add_model_args",
    "apply_config_defaults",
    "experiment_config",
    "key_data_of",
    "key_rows_of",
    "load_embeddings",
    "machine_info",
    "train_namespace",
]
