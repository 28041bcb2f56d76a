"""The project's size rules over ``dkvb_jax/`` and ``experiments/``: no module over 500 lines,
no function over 120.

A failure lists every offender with its length, so that a long function is split into named
steps before it lands rather than found later.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED = ("dkvb_jax", "experiments")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120


def offences(source: str, name: str) -> list[str]:
    """``"name: 612 lines"`` / ``"name:outer.inner (line 3): 130 lines"`` for each breach."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: module of {lines} lines (limit {MAX_MODULE_LINES})")

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            qual = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(
                            f"{name}:{qual} (line {child.lineno}): function of {length} lines "
                            f"(limit {MAX_FUNCTION_LINES})"
                        )
                qual += "."
            visit(child, qual)

    visit(ast.parse(source), "")
    return found


def _offences() -> list[str]:
    paths = sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py"))
    return [
        o for path in paths for o in offences(path.read_text(), path.relative_to(ROOT).as_posix())
    ]


def test_no_module_or_function_over_the_limits():
    listed = _offences()
    assert not listed, "split these into named steps:\n" + "\n".join(listed)


def _function(lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x = {i}\n" for i in range(lines - 1))
    return f"{indent}def f():\n{body}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (_function(MAX_FUNCTION_LINES), []),
        (_function(MAX_FUNCTION_LINES + 1), ["m.py:f (line 1): function of 121 lines"]),
        (
            "class C:\n" + _function(MAX_FUNCTION_LINES + 1, "    "),
            ["m.py:C.f (line 2): function of 121 lines"],
        ),
        ("x = 0\n" * MAX_MODULE_LINES, []),
        ("x = 0\n" * (MAX_MODULE_LINES + 1), ["m.py: module of 501 lines"]),
    ],
    ids=["function-at-limit", "function-over", "method-over", "module-at-limit", "module-over"],
)
def test_offences_are_found(source, expected):
    found = offences(source, "m.py")
    assert [f.split(" (limit")[0] for f in found] == expected
