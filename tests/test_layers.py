"""Imports in ``common/`` run one way through :data:`common.LAYERS`: no module imports from a higher layer, the
packages and top-level modules of ``common`` import each other without a cycle, and each imports on its own.

The imports are read with :mod:`ast` from every module under ``common/``, at module level and inside functions,
``import x`` and ``from x import y``, absolute and relative, so the check takes a fraction of a second.
"""

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from common import LAYERS

REPO_ROOT = Path(__file__).resolve().parents[1]
UNITS = [unit for layer in LAYERS for unit in layer]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Import:
    """One import in a module of the package: where it is, what it names, and the units on both sides."""

    path: Path
    line: int
    module: str
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def module_name(path: Path, root: Path) -> str:
    """``common/data/slices.py`` -> ``common.data.slices``; ``common/data/__init__.py`` -> ``common.data``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The package or top-level module of ``common`` that ``module`` belongs to (``common`` for its ``__init__``)."""
    return ".".join(module.split(".")[:2])


def is_module(name: str, root: Path) -> bool:
    """Whether ``name`` (``common.x.y``) is a module or package under ``root``'s parent, not an attribute."""
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, root: Path) -> list[str]:
    """The absolute names of the modules an import statement of ``module`` loads: ``from a import b`` loads
    ``a.b`` where that is a module, else ``a`` (``b`` is then an attribute of ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    names = [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}", root) else base for alias in node.names]
    return list(dict.fromkeys(names))


def package_imports(root: Path) -> list[Import]:
    """Every import of a module of the package at ``root`` (a folder holding ``__init__.py``) from that package."""
    package = root.name
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in imported_modules(node, module, path.name == "__init__.py", root):
                if name == package or name.startswith(package + "."):
                    found.append(Import(path.relative_to(root.parent), node.lineno, name, unit_of(module),
                                        unit_of(name)))
    return found


def upward_imports(imports: list[Import], rank: dict[str, int]) -> list[str]:
    """The imports from a higher layer, or from a unit that :data:`common.LAYERS` does not place, as messages."""
    problems = []
    for found in imports:
        for unit in (found.importer, found.imported):
            if unit not in rank:
                problems.append(f"{found}: {unit} is in no layer of common.LAYERS; place it there")
        if found.importer in rank and found.imported in rank and rank[found.imported] > rank[found.importer]:
            problems.append(f"{found}: layer {rank[found.imported]} ({found.imported}) above "
                            f"layer {rank[found.importer]} ({found.importer})")
    return problems


def import_cycle(imports: list[Import]) -> list[Import]:
    """One cycle of imports between units (each import made by the unit the one before imports), or ``[]``."""
    edges: dict[str, dict[str, Import]] = {}
    for found in imports:
        if found.importer != found.imported:
            edges.setdefault(found.importer, {}).setdefault(found.imported, found)
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(unit: str, path: list[Import]) -> list[Import]:
        state[unit] = "open"
        for target, found in edges.get(unit, {}).items():
            if state.get(target) == "open":
                start = next(i for i, step in enumerate(path + [found]) if step.importer == target)
                return (path + [found])[start:]
            if target not in state and (cycle := visit(target, path + [found])):
                return cycle
        state[unit] = "done"
        return []

    for unit in sorted(edges):
        if unit not in state and (cycle := visit(unit, [])):
            return cycle
    return []


# ------------------------------------------------------------------------------------------- the package


def test_every_unit_of_common_has_a_layer():
    root = REPO_ROOT / "common"
    present = {f"common.{p.stem if p.is_file() else p.name}" for p in root.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert present | {"common"} == set(UNITS), "common.LAYERS must list every package and module of common/"
    assert len(UNITS) == len(set(UNITS))


@pytest.fixture(scope="module")
def common_imports() -> list[Import]:
    return package_imports(REPO_ROOT / "common")


def test_common_imports_no_higher_layer(common_imports):
    problems = upward_imports(common_imports, RANK)
    assert not problems, "imports from a higher layer of common.LAYERS:\n" + "\n".join(problems)


def test_common_packages_import_each_other_without_a_cycle(common_imports):
    cycle = import_cycle(common_imports)
    assert not cycle, "import cycle between packages of common:\n" + "\n".join(map(str, cycle))


def test_each_unit_imports_on_its_own():
    """Every package and module of :data:`common.LAYERS` imports first, with no other module of ``common`` loaded
    (one interpreter; ``common``'s modules are dropped from ``sys.modules`` before each)."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for unit in {UNITS!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'common' or m.startswith('common.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(unit)\n"
        "    except Exception:\n"
        "        failed.append(unit)\n"
        "        print(f'import {unit} failed:', traceback.format_exc(), file=sys.stderr)\n"
        "sys.exit(bool(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -------------------------------------------------------------------------------------------- the checks


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "common"


def test_checks_find_upward_imports_in_functions_and_relative_imports(tmp_path):
    package = write_package(tmp_path, {
        "common/__init__.py": "",
        "common/data/__init__.py": "from .slices import x\n",
        "common/data/slices.py": "import os\n\n\ndef x():\n    from ..transforms.slices import y\n",
        "common/transforms/__init__.py": "",
        "common/transforms/slices.py": "import common.data\nfrom common import data\n",
    })
    imports = package_imports(package)
    problems = upward_imports(imports, {"common": 0, "common.data": 1, "common.transforms": 2})
    assert problems == [f"{Path('common/data/slices.py')}:5 imports common.transforms.slices: "
                        "layer 2 (common.transforms) above layer 1 (common.data)"]
    cycle = import_cycle(imports)
    assert {(str(step), step.importer) for step in cycle} == {
        (f"{Path('common/data/slices.py')}:5 imports common.transforms.slices", "common.data"),
        (f"{Path('common/transforms/slices.py')}:1 imports common.data", "common.transforms"),
    }


def test_checks_name_a_unit_without_a_layer(tmp_path):
    package = write_package(tmp_path, {"common/__init__.py": "", "common/extra.py": "from common import paths\n",
                                       "common/paths.py": ""})
    problems = upward_imports(package_imports(package), {"common": 0, "common.paths": 0})
    assert problems == [f"{Path('common/extra.py')}:1 imports common.paths: common.extra is in no layer of "
                        "common.LAYERS; place it there"]
