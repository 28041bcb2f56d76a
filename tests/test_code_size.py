"""The project's size rules over ``dkvb_jax/``: no module over 500 lines, no function over 120.

A failure lists every offender with its length, so that a long function is split into named
steps before it lands rather than found later.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dkvb_jax"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120

# Files exempt for now, relative to dkvb_jax/. experiment/class_unlearning.py (964 lines,
# run_class_unlearning 316) is being split into fit -> one row per method -> baseline rows in
# a parallel change; remove its entry when that lands (test_allow_list_is_current then insists).
ALLOWED: frozenset[str] = frozenset({"experiment/class_unlearning.py"})


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


def _package_offences() -> dict[str, list[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        found = offences(path.read_text(), rel)
        if found:
            out[rel] = found
    return out


def test_no_module_or_function_over_the_limits():
    listed = [o for rel, found in _package_offences().items() if rel not in ALLOWED for o in found]
    assert not listed, "split these into named steps:\n" + "\n".join(listed)


def test_allow_list_is_current():
    stale = sorted(ALLOWED - set(_package_offences()))
    assert not stale, f"within the limits now, remove from ALLOWED: {stale}"


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
