"""Loading the repository's scripts (experiments/, notebooks/) as modules in tests."""

import importlib.util
import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_script(relative: str, name: str) -> types.ModuleType:
    """Imports `ROOT/relative` as module `name` (registered, so its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve field types through sys.modules
    spec.loader.exec_module(module)
    return module
