"""notebooks/quickstart.ipynb is the generated one and runs top to bottom."""

import os
import pathlib

import nbformat
import pytest
from script_testutil import load_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def _builder():
    return load_script("notebooks/make_quickstart.py", "make_quickstart")


def test_notebook_matches_its_builder():
    built = _builder().build()
    saved = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in saved.cells] == [c.source for c in built.cells], (
        "quickstart.ipynb is stale: run python notebooks/make_quickstart.py"
    )


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    # A fresh cache: the notebook encodes the shipped sample with the shipped ResNet-20.
    monkeypatch.setenv("DKVB_CACHE_DIR", os.environ.get("DKVB_TEST_CACHE_DIR", str(tmp_path)))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = _builder().build()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    outputs = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )  # fmt: skip
    assert "| DKVB-UvA" in outputs and "| finetune" in outputs
    assert any("image/png" in o.get("data", {}) for o in nb.cells[-1].outputs)
