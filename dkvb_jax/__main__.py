"""``python -m dkvb_jax``: the ``dkvb`` command line."""

import sys

from dkvb_jax.cli.main import main

sys.exit(main())
