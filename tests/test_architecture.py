"""The architecture is code, not a picture: the layer contracts of pyproject.toml hold
(`lint-imports`), every module sits in a layer, no import circle exists (imports inside functions
included), and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sweeper"
# "modules under about 300 lines, functions under about 40" (STYLE.md); the margins below are
# the "about", not room to grow: raise them only with a note saying why
MAX_MODULE_LINES = 320
MAX_FUNCTION_LINES = 50


def _lint_imports_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_every_module_has_its_place_in_a_layer():
    contract = _lint_imports_config()["contracts"][0]
    placed = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    modules = {f"sweeper.{path.stem}" for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    modules |= {f"sweeper.{path.name}" for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert modules - placed == set(), "add these modules to a layer in pyproject.toml"
    assert placed - modules == set(), "these layers name modules that do not exist"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # every import statement, at module level or inside a function; not those for type checkers
    return grimp.build_graph("sweeper", exclude_type_checking_imports=True, cache_dir=None)


def test_no_import_circle_exists_even_through_imports_inside_functions(graph):
    circles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                circles.append(" -> ".join((module, *back)))
    assert not circles, "import circles:\n" + "\n".join(circles)


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_their_functions_stay_small(path: Path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{len(lines)} lines: split the module by what it is for"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse("\n".join(lines)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
