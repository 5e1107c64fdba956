"""The dependency rules between the four packages, checked on their source with ``ast`` (nothing
is imported, so a rule broken in a module no test imports is still caught):

- ``stpn_core`` imports no other package of ours;
- ``stpn_analysis`` imports no task package (it only reads run folders);
- the task packages, ``stpn_supervised`` and ``stpn_rl``, never import each other;
- ``stpn_rl`` does not import ``stpn_analysis`` when it is imported (only inside a function), so
  installing ``stpn-rl`` does not pull matplotlib;
- every package's pyproject declares the packages of ours it imports at import time.
"""

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("stpn_core", "stpn_analysis", "stpn_supervised", "stpn_rl")
TASKS = ("stpn_supervised", "stpn_rl")
IMPORT_FUNCTIONS = ("import_module", "__import__")


class _Imports(ast.NodeVisitor):
    """Top-level names imported by one module, split by whether they run on import
    (module or class body) or only when a function is called."""

    def __init__(self) -> None:
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self._depth = 0

    def _add(self, module: str) -> None:
        (self.lazy if self._depth else self.eager).add(module.split(".")[0])

    def _in_function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module)

    def visit_Call(self, node: ast.Call) -> None:
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if name in IMPORT_FUNCTIONS and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self._add(node.args[0].value)
        self.generic_visit(node)


def imports_of_source(source: str) -> tuple[set[str], set[str]]:
    """``(eager, lazy)`` top-level module names imported by ``source``."""
    visitor = _Imports()
    visitor.visit(ast.parse(source))
    return visitor.eager, visitor.lazy


def _source_dir(package: str) -> Path:
    return ROOT / "packages" / package.replace("_", "-") / "src" / package


def package_imports(package: str) -> tuple[set[str], set[str]]:
    """Our packages that ``package`` imports, ``(eager, lazy-only)``, over all its modules."""
    eager: set[str] = set()
    lazy: set[str] = set()
    for path in sorted(_source_dir(package).rglob("*.py")):
        module_eager, module_lazy = imports_of_source(path.read_text())
        eager |= module_eager
        lazy |= module_lazy
    return eager & set(OURS) - {package}, lazy & set(OURS) - {package} - eager


def declared_dependencies(package: str) -> set[str]:
    """Our packages listed in ``package``'s pyproject ``[project] dependencies``."""
    pyproject = _source_dir(package).parents[1] / "pyproject.toml"
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].replace("-", "_") for r in requirements}
    return names & set(OURS)


def test_the_checker_tells_import_time_from_function_imports() -> None:
    source = (
        "import stpn_core.cli\nfrom stpn_rl.envs import MazeOptions\n"
        "class A:\n    import stpn_supervised\n"
        "def f():\n    import stpn_analysis\n    return importlib.import_module('matplotlib')\n"
        "g = lambda: __import__('pandas')\nfrom . import sibling\n"
    )
    eager, lazy = imports_of_source(source)
    assert eager == {"stpn_core", "stpn_rl", "stpn_supervised"}
    assert lazy == {"stpn_analysis", "matplotlib", "pandas"}


def test_every_package_is_found_and_builds_on_the_core() -> None:
    for package in OURS:
        assert _source_dir(package).is_dir(), package
        if package != "stpn_core":
            assert "stpn_core" in package_imports(package)[0], package


def test_core_imports_no_other_package() -> None:
    assert package_imports("stpn_core") == (set(), set())


def test_analysis_imports_no_task_package() -> None:
    eager, lazy = package_imports("stpn_analysis")
    assert not (eager | lazy) & set(TASKS)


@pytest.mark.parametrize(("package", "other"), [TASKS, TASKS[::-1]])
def test_task_packages_never_import_each_other(package: str, other: str) -> None:
    eager, lazy = package_imports(package)
    assert other not in eager | lazy


def test_rl_imports_analysis_only_inside_functions() -> None:
    assert "stpn_analysis" not in package_imports("stpn_rl")[0]
    assert "stpn_analysis" not in declared_dependencies("stpn_rl")


@pytest.mark.parametrize("package", OURS)
def test_pyprojects_declare_what_is_imported_on_import(package: str) -> None:
    assert package_imports(package)[0] <= declared_dependencies(package)
