"""The import graph: no module imports itself through a cycle, and the core is a leaf library.

The graph is built statically with :mod:`ast` from every ``.py`` file of the core package and
the deployment units, counting every import statement wherever it stands (module level,
inside a function, under ``TYPE_CHECKING``): an import moved into a function still ties the
two modules together, it only hides the cycle from the interpreter until that call.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gourmetgram.constants import REPO_ROOT

# Importable top-level name -> its folder (setup.cfg package_dir).
PACKAGES = {
    "gourmetgram": REPO_ROOT / "gourmetgram",
    "gourmetgram_app": REPO_ROOT / "gourmetgram_app",
    "components": REPO_ROOT / "components",
    "pipelines": REPO_ROOT / "pipelines",
    "food_transformer": REPO_ROOT / "transformers" / "food_transformer",
    "drift_detector": REPO_ROOT / "detectors" / "drift_detector",
    "capture_sink": REPO_ROOT / "capture" / "capture_sink",
    "gourmetgram_webapp": REPO_ROOT / "webapp" / "gourmetgram_webapp",
}
DEPLOYMENT_UNITS = ("components", "pipelines", "food_transformer", "drift_detector", "capture_sink",
                    "gourmetgram_webapp")
# The app layer: orchestration that may import everything (the CLI, the local stack that runs
# the deployment units on one machine), its own package; nothing outside it imports it.
APP_LAYER = ("gourmetgram_app",)


# Imports made by name at run time, which ast cannot see: the CLI entry loads every module of
# gourmetgram_app.cli.commands (pkgutil + importlib) to add its subcommand.
DYNAMIC_IMPORTS = {"gourmetgram_app.cli.main": "gourmetgram_app.cli.commands."}


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([top, *parts])] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The known modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the containing package
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from pkg import mod` loads pkg.mod when that is a module, else a name from pkg
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in known:  # `import a.b.c` of a non-module attribute: its module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            edges.update(_imported(node, module, is_package, known))
        if module in DYNAMIC_IMPORTS:
            edges.update(m for m in known if m.startswith(DYNAMIC_IMPORTS[module]))
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has a few hundred nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        start = min(component)
        # shortest path back to start within the component (breadth first)
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & component):
                if w == start:
                    cycle = paths[v] + [start]
                    break
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        cycles.append(cycle or sorted(component))
    return cycles


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    # module level, absolute
    assert "gourmetgram.constants" in graph["gourmetgram.config"]
    # inside a function (cli/commands/loadtest.py imports gourmetgram.config in its handler)
    assert "gourmetgram.config" in graph["gourmetgram_app.cli.commands.loadtest"]
    # loaded by name at run time: the CLI's subcommands
    assert "gourmetgram_app.cli.commands.rollout" in graph["gourmetgram_app.cli.main"]
    # the deployment units are in the graph
    assert any(m.startswith("food_transformer.") for m in graph)
    assert any(m.startswith("drift_detector.") for m in graph)
    # and a planted cycle is found and printed as a path
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_the_core_imports_no_deployment_unit():
    graph = import_graph()
    core = [m for m in graph if _in(m, ("gourmetgram",)) and not _in(m, APP_LAYER)]
    assert len(core) > 20  # the core really was scanned
    violations = sorted(f"{m} -> {dep}" for m in core for dep in graph[m] if _in(dep, DEPLOYMENT_UNITS))
    assert not violations, ("the core package imports deployment units (move the shared piece into the "
                            "core, or the caller into the app layer):\n  " + "\n  ".join(violations))


def test_nothing_outside_the_app_layer_imports_it():
    graph = import_graph()
    outside = [m for m in graph if not _in(m, APP_LAYER)]
    assert any(_in(m, DEPLOYMENT_UNITS) for m in outside) and any(_in(m, ("gourmetgram",)) for m in outside)
    violations = sorted(f"{m} -> {dep}" for m in outside for dep in graph[m] if _in(dep, APP_LAYER))
    assert not violations, ("the core or a deployment unit imports the app layer (move the shared piece "
                            "into the core):\n  " + "\n  ".join(violations))


CLI = ("gourmetgram_app.cli",)


def cli_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of the CLI from modules outside it."""
    return sorted(f"{m} -> {dep}" for m in graph if not _in(m, CLI) for dep in graph[m] if _in(dep, CLI))


def test_the_cli_is_the_outermost_layer():
    """Nothing outside the CLI imports it: what a command shares with the runtime (pipeline runs,
    the release steps) lives in the runtime or the core, and the command only parses and prints."""
    graph = import_graph()
    assert "gourmetgram_app.local.cycle" in graph and "gourmetgram_app.pipeline_runs" in graph  # scanned
    violations = cli_violations(graph)
    assert not violations, ("imports of the CLI from outside it (move what they share into "
                            "gourmetgram_app.pipeline_runs, gourmetgram_app.local or the core):\n  "
                            + "\n  ".join(violations))
    # and the rule sees a runtime module that imports a command, as the cycle once did
    planted = {**graph, "gourmetgram_app.local.cycle": graph["gourmetgram_app.local.cycle"]
               | {"gourmetgram_app.cli.commands.pipeline"}}
    assert cli_violations(planted) == ["gourmetgram_app.local.cycle -> gourmetgram_app.cli.commands.pipeline"]
