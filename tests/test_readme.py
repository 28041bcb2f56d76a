"""The README's Python example runs, prints what the README shows, and really forgets."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_prints_what_the_readme_shows():
    example = re.search(r"```python\n(.*?)```\s*\n(.*?)```text\n(.*?)```", README.read_text(), re.S)
    assert example, "README.md lost its Python example or the printout shown after it"
    code, shown = example.group(1), example.group(3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == shown.strip()
    numbers = re.search(
        r"forget class: ([\d.]+) -> ([\d.]+), others: ([\d.]+) -> ([\d.]+)", out.getvalue()
    )
    before, after, others_before, others_after = map(float, numbers.groups())
    # Data a model cannot get all right, a class forgotten, the other classes kept.
    assert 0.5 < before < 0.95 and after == 0.0, out.getvalue()
    assert others_before < 0.95 and abs(others_after - others_before) <= 0.02, out.getvalue()
