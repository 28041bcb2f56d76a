"""Fixtures for the data tests."""

import numpy as np
import pytest
from data_helpers import write_folder, write_zip


@pytest.fixture(params=["dir", "zip"])
def make_root(request, tmp_path):
    """make_root(files) -> a directory or a zip (parametrised) holding `files`."""

    def make(files):
        if request.param == "dir":
            return write_folder(tmp_path / "folder", files)
        return write_zip(tmp_path / "data.zip", files)

    make.kind = request.param
    return make


@pytest.fixture
def rng():
    return np.random.default_rng(0)
