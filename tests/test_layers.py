"""Imports only point down, and never in circles (DESIGN.md, "Layers").

Every module under ``src/twinloop`` is parsed with :mod:`ast` (nothing is imported), and each
of its ``twinloop.*`` imports is collected, at module level and inside functions alike.

Where each module sits, bottom to top:

* ``core`` (0): ``twinloop.core.*``; the package root ``twinloop/__init__.py`` (version and the
  registry's ``make``); ``twinloop/envs.py`` (the registry table: it names the simulators' and
  devices' entry points only as ``"module:attr"`` strings, never by import, which this test
  also checks).
* ``sim``, ``hardware``, ``datasets``, ``controllers`` (1): siblings, none above the others.
  A sibling is not below, so a module here imports no other package of this tier, with one
  exception that the design requires: ``hardware`` imports ``sim``, because a network twin
  runs the simulator and a device backend speaks its system's config. Hence ``sim`` never
  imports ``hardware``, ``controllers`` imports neither ``sim`` nor ``hardware``, and
  ``datasets`` knows nothing of any system (the system figures in ``sim/<system>/figures.py``
  take a dataset as an untyped object and import no ``twinloop.datasets``).
* ``eval`` (2); ``sysid`` (2): fits a device's hidden physics to captures, importing
  ``core``, ``sim`` and ``datasets``.
* ``demo`` (3): ``twinloop/demo.py``, the main job as a library (callable from Python).
* ``cli`` (3): every module named ``cli.py`` or ``*_cli.py``, wherever it lives
  (``twinloop/cli.py``, ``twinloop/demo_cli.py``, ``datasets/cli.py``,
  ``datasets/show_cli.py``, ``hardware/microscope/cli.py`` ...). A command line that lives
  beside its package is still command-line code: it may import any layer (all lie at or
  below it), and no module of a lower layer may import it. ``cli`` uses ``demo``; ``demo``
  never imports ``cli``.

A module may import its own layer (``datasets.record`` -> ``datasets.companion``); shared
helpers of two command lines therefore go below both (``core/text.py``), not into one of them.

Circles: the graph of module-level imports must have no cycle (such a cycle breaks
``import`` depending on which module comes first), and neither may the graph that includes
the imports inside functions (those circles are the tangles the issue names: ``twinloop.cli``
<-> ``datasets/cli.py``, ``datasets/record.py`` <-> ``datasets/companion.py``). Importing
``pkg.mod`` runs ``pkg/__init__.py`` too, so ``from twinloop.datasets import X`` inside the
``datasets`` package closes a circle through its ``__init__``; import the defining module.
``if TYPE_CHECKING:`` blocks count as well: a type hint is a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Rank of each layer; a module imports only layers of lower rank, or its own layer.
RANK = {
    "core": 0,
    "sim": 1,
    "hardware": 1,
    "datasets": 1,
    "controllers": 1,
    "eval": 2,
    "sysid": 2,
    "demo": 3,
    "cli": 3,
}
#: Imports between different layers of one rank that the design allows (importer, imported).
SIBLING_IMPORTS = {("hardware", "sim"), ("cli", "demo")}
#: Packages under twinloop/ that are layers of their own.
PACKAGES = ("core", "sim", "hardware", "datasets", "controllers", "eval", "sysid")
#: Modules at the package root and their layer (anything new at the root must be placed here).
ROOT_MODULES = {
    "twinloop": "core",
    "twinloop.envs": "core",
    "twinloop.demo": "demo",
    "twinloop.transfer": "demo",
}


@dataclass(frozen=True)
class Import:
    """One ``twinloop.*`` import of a module."""

    source: str
    target: str
    line: int
    module_level: bool

    def __str__(self) -> str:  # noqa: D105
        where = "module level" if self.module_level else "inside a function"
        return f"{self.source} imports {self.target} (line {self.line}, {where})"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) of every module under src/twinloop."""
    out = {}
    for path in sorted((SRC / "twinloop").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


MODULES = _modules()


def _known(name: str) -> str:
    """The longest prefix of ``name`` that is a module (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> list[Import]:
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    in_functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # ``from pkg import mod`` imports the module pkg.mod; ``from pkg import name``, pkg
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "twinloop" or target.startswith("twinloop."):
                found.append(
                    Import(module, _known(target), node.lineno, id(node) not in in_functions)
                )
    return list(dict.fromkeys(found))  # one entry per line and target


IMPORTS = {m: _imports(m) for m in MODULES}


def layer_of(module: str) -> str:
    """The layer of a module, by the rules of this file's docstring."""
    if module.rpartition(".")[2] == "cli" or module.endswith("_cli"):
        return "cli"
    if module in ROOT_MODULES:
        return ROOT_MODULES[module]
    package = module.split(".")[1] if module.count(".") else ""
    if package in PACKAGES:
        return package
    raise AssertionError(
        f"{module} has no layer: put it in a package, or add it to ROOT_MODULES in "
        "tests/test_layers.py with the layer it belongs to"
    )


def allowed(importer: str, imported: str) -> bool:
    """Whether a module of layer ``importer`` may import one of layer ``imported``."""
    if importer == imported or RANK[imported] < RANK[importer]:
        return True
    return RANK[imported] == RANK[importer] and (importer, imported) in SIBLING_IMPORTS


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe_cycle(component: list[str], module_level_only: bool) -> str:
    inside = set(component)
    lines = [
        f"  {imp}"
        for m in component
        for imp in IMPORTS[m]
        if imp.target in inside and imp.target != m and (imp.module_level or not module_level_only)
    ]
    return " <-> ".join(component) + ":\n" + "\n".join(lines)


def test_every_module_is_found_and_has_a_layer() -> None:
    assert {"twinloop", "twinloop.cli", "twinloop.core.registry", "twinloop.datasets"} <= set(
        MODULES
    )
    layers = {m: layer_of(m) for m in MODULES}
    assert layers["twinloop.datasets.show_cli"] == "cli"
    assert layers["twinloop.hardware.microscope.cli"] == "cli"
    assert layers["twinloop.sim.stem.figures"] == "sim"
    assert layers["twinloop.envs"] == "core"
    assert layers["twinloop.eval"] == "eval"


def test_imports_point_down() -> None:
    wrong = [
        f"{imp}: {layer_of(imp.source)} may not import {layer_of(imp.target)}"
        for imports in IMPORTS.values()
        for imp in imports
        if not allowed(layer_of(imp.source), layer_of(imp.target))
    ]
    assert not wrong, (
        "imports that point up or sideways (layers: core < sim, hardware, datasets, "
        "controllers < eval < demo, cli; see tests/test_layers.py):\n" + "\n".join(wrong)
    )


def test_the_registry_table_names_systems_only_as_strings() -> None:
    for module in ("twinloop", "twinloop.envs"):
        targets = {imp.target for imp in IMPORTS[module]}
        assert all(layer_of(t) == "core" for t in targets), (module, targets)


def test_no_module_level_import_cycles() -> None:
    edges = {m: {i.target for i in IMPORTS[m] if i.module_level} - {m} for m in MODULES}
    cycles = _cycles(edges)
    assert not cycles, "module-level import cycles:\n" + "\n".join(
        _describe_cycle(c, module_level_only=True) for c in cycles
    )


def test_no_import_cycles_through_functions_either() -> None:
    edges = {m: {i.target for i in IMPORTS[m]} - {m} for m in MODULES}
    cycles = _cycles(edges)
    assert not cycles, (
        "import cycles (counting imports inside functions); move what both sides need below "
        "both:\n" + "\n".join(_describe_cycle(c, module_level_only=False) for c in cycles)
    )


# --- the checker itself ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("importer", "imported", "ok"),
    [
        ("cli", "core", True),
        ("cli", "demo", True),
        ("demo", "cli", False),
        ("eval", "sim", True),
        ("hardware", "sim", True),
        ("sim", "hardware", False),
        ("controllers", "sim", False),
        ("controllers", "hardware", False),
        ("datasets", "sim", False),
        ("datasets", "controllers", False),
        ("sim", "datasets", False),
        ("datasets", "eval", False),
        ("core", "sim", False),
        ("datasets", "cli", False),
        ("datasets", "datasets", True),
    ],
)
def test_layer_rules(importer: str, imported: str, ok: bool) -> None:
    assert allowed(importer, imported) is ok


def test_cycle_finder_finds_circles_and_only_circles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_parsing_resolves_submodules_and_imports_inside_functions() -> None:
    record = _imports("twinloop.datasets.record")
    targets = {(i.target, i.module_level) for i in record}
    # ``from twinloop.datasets import companion as C`` is the submodule, not the package
    assert ("twinloop.datasets.companion", True) in targets
    assert ("twinloop.datasets", True) not in targets
    # an import inside a function is found and marked as such
    cli = _imports("twinloop.cli")
    assert any(i.target == "twinloop.datasets.cli" and not i.module_level for i in cli)
    assert layer_of("twinloop.cli") == "cli"
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("twinloop.newthing")
