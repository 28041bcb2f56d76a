"""The encoder modules import each other without cycles (function-level imports included)."""

import ast
import pathlib

import dkvb_jax.encoders

PACKAGE = "dkvb_jax.encoders"
ROOT = pathlib.Path(dkvb_jax.encoders.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """Sibling modules that `path` imports anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return out


def test_no_import_cycles():
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(ROOT / f"{m}.py") & modules for m in modules}
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join((*path[path.index(m) :], m))}"
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, (*path, m))
        done.add(m)

    for m in sorted(modules):
        visit(m, ())
