"""notebooks/quickstart.ipynb: committed as its builder makes it, executed, and it runs top to
bottom (here on a smaller model, injected after its parameters cell)."""

import os
import pathlib

import nbformat
import pytest
from script_testutil import load_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
# A small model, no baselines and no membership inference: the run proves that every cell
# works (tests/experiment/test_class_unlearning.py covers the comparison itself).
FAST = dict(
    CONFIG=dict(
        num_codebooks=16,
        num_keys=64,
        key_dim=8,
        key_epochs=2,
        key_batch_size=600,  # the 600 held-out rows in one batch: one k-means compilation
        holdout_fraction=0.3,
        baselines=(),
        dkvb_finetune=False,
        methods=("uva", "exact"),
        mia=False,
    ),
    FORGET_EXAMPLES=5,
)


def _builder():
    return load_script("notebooks/make_quickstart.py", "make_quickstart")


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _problems(nb) -> list[str]:
    """Outputs a reader should never see: stderr (warnings, progress bars) and errors."""
    return [
        f"cell {i}: {o.get('name', o.output_type)}: {o.get('text', o.get('evalue', ''))[:200]}"
        for i, c in enumerate(_code_cells(nb))
        for o in c.outputs
        if o.output_type == "error" or o.get("name") == "stderr"
    ]


def _text(nb) -> str:
    return "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in _code_cells(nb)
        for o in c.outputs
    )


def test_committed_notebook_is_its_builder_executed():
    built = _builder().build()
    saved = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in saved.cells] == [c.source for c in built.cells], (
        "quickstart.ipynb is stale: run python notebooks/make_quickstart.py"
    )
    # Every cell but the parameters one prints or shows something: readers see the results.
    silent = [c.source.splitlines()[0] for c in _code_cells(saved)[1:] if not c.outputs]
    assert not silent, f"cells without outputs (not executed?): {silent}"
    assert not _problems(saved), _problems(saved)


def test_parameters_are_injected_after_the_parameters_cell():
    nb = _builder().build(dict(ENCODER="mobilenet_v1", FORGET_EXAMPLES=3))
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = tags.index(["parameters"])
    assert tags[at + 1] == ["injected-parameters"]
    assert nb.cells[at + 1].source == "ENCODER = 'mobilenet_v1'\nFORGET_EXAMPLES = 3"


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    # The notebook encodes the shipped sample with the shipped ResNet-20 (no ../shared needed).
    monkeypatch.setenv("DKVB_CACHE_DIR", os.environ.get("DKVB_TEST_CACHE_DIR", str(tmp_path)))
    builder = _builder()
    nb = builder.execute(builder.build(FAST), str(tmp_path))
    assert not _problems(nb), _problems(nb)
    text = _text(nb)
    for expected in (
        "exact removal    forget   0.0%",
        "bit-identical to a refit without them: True",
        "exact removal of examples: certified=False, values_exact=True",
        "UvA: certified=False, values_exact=False",
        "| DKVB-UvA",
        "| DKVB-exact",
    ):
        assert expected in text, text
    assert any("image/png" in o.get("data", {}) for o in nb.cells[-1].outputs)
