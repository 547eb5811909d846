"""The package layout: no import cycles, the old module names and public names still
work, light imports stay light, and every console script resolves.

The import graph is read from the sources with ``ast`` (nothing is imported). It holds
the imports that run when a module is imported: module-level ``import``/``from``
statements, also inside ``if``/``try``/``with`` blocks and class bodies, but not those
under ``if TYPE_CHECKING:`` (never run) and not those inside functions (lazy imports,
which run after every module involved has finished importing). An edge A -> B means
importing A runs B's module code first. ``from P import name`` is an edge to the
submodule ``P.name`` when there is one, else to ``P`` (the name is read from ``P``'s
namespace, so ``P`` must have run, even when ``P`` is A's own package); importing
``P.m`` from outside ``P`` also runs ``P/__init__.py``, an edge to ``P``; and a
package's ``__init__`` importing its own submodules is an edge like any other.
"""

import ast
import configparser
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from typing import Dict, Iterator, List, Optional, Set

import pytest

from subprocess_env import REPO, cpu_environment

import galr_jax
from galr_jax import _moved
from galr_jax.evaluation import scoring

PACKAGE = "galr_jax"
# Every console script setup.cfg installs; a renamed or dropped one is a broken interface.
CONSOLE_SCRIPTS = ("galr-convert", "galr-demo-data", "galr-eval", "galr-export", "galr-release",
                   "galr-separate", "galr-summary", "galr-train", "galr-voice-pool")
# Modules that import torch at module level (the ``torch`` extra).
NEEDS_TORCH = ("galr_jax.interop.",)

Graph = Dict[str, Set[str]]


def module_files(root: str, package: str) -> Dict[str, str]:
    """Dotted module name -> source file, for every module of ``package`` under ``root``."""
    modules = {}
    for folder, subfolders, files in os.walk(os.path.join(root, package)):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = os.path.join(folder, name)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_time_imports(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_imports(node.body)
            yield from _import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                yield from _import_time_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_imports(node.body)


def _imported_modules(node: ast.stmt, module: str, is_package: bool,
                      modules: Dict[str, str]) -> Set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    found = set()
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.add(submodule if submodule in modules else source)
    return found


def import_graph(root: str, package: str) -> Graph:
    """Module -> the package's modules that importing it runs first (see the docstring)."""
    modules = module_files(root, package)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = os.path.basename(path) == "__init__.py"
        edges = set()
        for node in _import_time_imports(tree.body):
            for target in _imported_modules(node, module, is_package, modules):
                if target not in modules:
                    continue  # another package's module
                if target != module:
                    edges.add(target)
                # The packages above the target run first, unless they contain the
                # importer (then they are running already).
                parts = target.split(".")
                for i in range(1, len(parts)):
                    package_above = ".".join(parts[:i])
                    if not (module + ".").startswith(package_above + "."):
                        edges.add(package_above)
        graph[module] = edges
    return graph


def find_cycle(graph: Graph) -> Optional[List[str]]:
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    visiting, done = [], set()

    def visit(node: str) -> Optional[List[str]]:
        visiting.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor in visiting:
                return visiting[visiting.index(successor):] + [successor]
            if successor not in done:
                cycle = visit(successor)
                if cycle:
                    return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def _write_package(root, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_import_graph_sees_cycles_through_package_inits_and_skips_lazy_imports(tmp_path):
    _write_package(tmp_path, {
        # The package's __init__ re-exports a name of its submodule ...
        "fake/__init__.py": "from fake.core.engine import run\n",
        "fake/core/__init__.py": "",
        "fake/core/engine.py": "from ..util import helper\n",
        # ... and a module elsewhere reads that name from the package: a real cycle.
        "fake/util.py": "import os\nfrom fake import run\n",
        "fake/lazy.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    import fake.util\n\ndef f():\n    from fake import run\n"),
        "fake/other/__init__.py": "from fake.other import leaf\n",
        "fake/other/leaf.py": "from fake import util\n",
        "fake/user.py": "from fake.other.leaf import x\n",
    })
    graph = import_graph(str(tmp_path), "fake")
    assert graph["fake"] == {"fake.core", "fake.core.engine"}
    assert graph["fake.core.engine"] == {"fake.util"}  # relative import, resolved
    assert graph["fake.util"] == {"fake"}
    assert graph["fake.lazy"] == set()
    # A submodule of its own package: the package is running already, no edge to it.
    assert graph["fake.other"] == {"fake.other.leaf"}
    assert graph["fake.other.leaf"] == {"fake.util"}
    # From outside, importing fake.other.leaf runs fake/other/__init__.py first.
    assert graph["fake.user"] == {"fake.other", "fake.other.leaf"}
    assert find_cycle(graph) == ["fake", "fake.core.engine", "fake.util", "fake"]


def test_the_package_has_no_import_cycles():
    graph = import_graph(REPO, PACKAGE)
    assert {"galr_jax.training.cli", "galr_jax.evaluation.scoring", "galr_jax.interop.cli",
            "galr_jax.inference.exported"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_of_the_package_imports_an_old_name():
    old_names = set(_moved.MOVED)
    users = {module: sorted(edges & old_names)
             for module, edges in import_graph(REPO, PACKAGE).items() if edges & old_names}
    assert not users, f"modules importing a moved module by its old name: {users}"
    # Lazy imports too: a text search over every module.
    for module, path in module_files(REPO, PACKAGE).items():
        if module == "galr_jax._moved":
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in old_names:
                pytest.fail(f"{path}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                moved = [a.name for a in node.names if f"{PACKAGE}.{a.name}" in old_names]
                assert not moved, f"{path}:{node.lineno} imports {moved} by the old name"


def _import_or_skip_torch(name: str):
    if name.startswith(NEEDS_TORCH):
        pytest.importorskip("torch")
    return importlib.import_module(name)


@pytest.mark.parametrize("old, new", sorted(_moved.MOVED.items()))
def test_old_module_name_is_the_moved_module(old, new):
    module = _import_or_skip_torch(new)
    assert importlib.import_module(old) is module
    assert getattr(galr_jax, old.rpartition(".")[2]) is module
    assert sys.modules[old] is module and module.__name__ == new
    assert module.__spec__.name == new  # not overwritten by the old name's import


def test_old_public_names_still_work():
    from galr_jax import build_model, exported, load_config
    from galr_jax.inference.exported import load
    from galr_jax.models import build_model as models_build_model

    assert exported.load is load and galr_jax.exported.load is load
    assert build_model is models_build_model
    assert load_config("demo").model.separator == "galr"
    # The scoring module became the evaluation package, which keeps its names.
    public = set()
    with open(scoring.__file__, encoding="utf-8") as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                public.add(node.name)
            elif isinstance(node, ast.Assign):
                public.update(t.id for t in node.targets if isinstance(t, ast.Name))
    public = {name for name in public if not name.startswith("_")}
    import galr_jax.evaluation as evaluation
    assert public == set(evaluation.__all__)
    assert all(getattr(evaluation, name) is getattr(scoring, name) for name in public)


def test_torch_interop_names_at_their_old_paths():
    pytest.importorskip("torch")
    from galr_jax.interop import convert, torch_reference

    import galr_jax.convert
    import galr_jax.torch_reference
    assert galr_jax.torch_reference.build_torch_model is torch_reference.build_torch_model
    assert galr_jax.convert.torch_to_flax is convert.torch_to_flax
    assert galr_jax.convert.flax_to_torch is convert.flax_to_torch


# Prints which heavy packages a fresh process has after each light import.
_LIGHT_IMPORTS = r"""
import importlib, json, sys

def heavy():
    return sorted({m.split(".")[0] for m in sys.modules} & {"jax", "flax", "torch", "orbax"})

report = {}
for statement in ("import galr_jax", "import galr_jax.config", "import galr_jax.training.cli",
                  "import galr_jax.training.host_memory", "import galr_jax.training",
                  "import galr_jax.inference", "import galr_jax.evaluation",
                  "import galr_jax.interop"):
    exec(statement)
    report[statement] = heavy()
from galr_jax import exported
report["from galr_jax import exported"] = heavy()
print(json.dumps(report))
"""


def test_light_imports_stay_light():
    """The command lines parse their arguments (and tune the allocator) before JAX is
    imported, and an exported model runs without Flax (docs/interop.md)."""
    result = subprocess.run([sys.executable, "-c", _LIGHT_IMPORTS], capture_output=True,
                            text=True, timeout=120, env=cpu_environment(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    exported = report.pop("from galr_jax import exported")
    assert report == {statement: [] for statement in report}
    assert exported == ["jax"]


@pytest.mark.parametrize("old, expected", [("galr_jax.train_cli", "--workdir"),
                                           ("galr_jax.convert", "torch-to-orbax")])
def test_python_dash_m_runs_a_moved_module_by_its_old_name(old, expected):
    if old == "galr_jax.convert":
        pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-m", old, "--help"],
                            capture_output=True, text=True, timeout=120, env=cpu_environment(),
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout and "usage:" in result.stdout


def _console_scripts() -> Dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def test_every_console_script_resolves():
    scripts = _console_scripts()
    assert sorted(scripts) == sorted(CONSOLE_SCRIPTS)
    for name, target in scripts.items():
        module_name, _, attribute = target.partition(":")
        assert module_name.startswith(PACKAGE + ".") and module_name not in _moved.MOVED, target
        if module_name.startswith(NEEDS_TORCH) and importlib.util.find_spec("torch") is None:
            continue
        assert callable(getattr(importlib.import_module(module_name), attribute)), name
