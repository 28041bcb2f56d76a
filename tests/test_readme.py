"""The README's Python example runs as printed and really forgets the class."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_forgets():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md lost its Python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    before, after = re.search(r"forget class: ([\d.]+) -> ([\d.]+)", out.getvalue()).groups()
    assert float(before) > 0.9 and float(after) == 0.0, out.getvalue()
