"""The package tree is the architecture: imports point one way between layers, and packages form no cycle.

Reads walkeeper/ with `ast` (no import of the code). Layers, lowest first (design.md §1):
core <- codec, storage <- repo <- postgres <- commands <- cli; accel imports only core; entry.py sits on top.
Nothing else stays at the top level of walkeeper/, and no module imports itself back through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "walkeeper"

# layer -> rank; a module may import its own layer or a lower rank (higher numbers sit above)
RANK = {"core": 0, "codec": 1, "storage": 1, "repo": 2, "postgres": 3, "commands": 4, "cli": 5}
# layers that may import only the listed ones besides themselves
ONLY = {"accel": {"core"}, "codec": {"core"}, "storage": {"core"}}
# the only modules at the top level of walkeeper/: the console entry and the package itself
TOP_LEVEL = {"__init__.py", "__main__.py", "entry.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every walkeeper module this file imports, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "walkeeper"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "walkeeper":
                continue
            found.add(mod)
            for alias in node.names:  # `from walkeeper import wal` imports the module walkeeper.wal
                sub = PKG.parent / f"{mod}.{alias.name}".replace(".", "/")
                if sub.is_dir() or sub.with_suffix(".py").exists():
                    found.add(f"{mod}.{alias.name}")
    return found


def _group(module: str) -> str:
    """The unit the rules speak of: walkeeper.<layer> for a package, the module itself at the top level."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        src = _group(_module_name(path))
        graph.setdefault(src, set())
        graph[src] |= {_group(m) for m in _imports(path)} - {src, "walkeeper"}
    return graph


def _layer(group: str) -> str:
    """The layer package a group belongs to; "" for a module at the top level of walkeeper/."""
    name = group.split(".")[1] if "." in group else ""
    return name if (PKG / name).is_dir() and name else ""


def test_imports_follow_the_layer_direction() -> None:
    bad = []
    for src, targets in _graph().items():
        s = _layer(src)
        for dst in targets:
            d = _layer(dst)
            if not d:
                if s:
                    bad.append(f"{src} -> {dst} (a layer imports nothing at the top level of walkeeper/)")
                continue
            if s in ONLY and d not in ONLY[s] | {s}:
                bad.append(f"{src} -> {dst} ({s} may import only {sorted(ONLY[s])})")
            elif s in RANK and d in RANK and RANK[d] > RANK[s]:
                bad.append(f"{src} -> {dst} (against the layer direction)")
            elif s in RANK and d == "accel" and s != "commands" and s != "cli":
                bad.append(f"{src} -> {dst} (only commands and cli use accel)")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``graph`` meets, as "a -> b -> a"."""
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                loop = [*stack[stack.index(nxt):], node, nxt] if nxt in stack else [node, nxt]
                cycles.append(" -> ".join(loop))
            elif nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_cycle_between_packages() -> None:
    """Cycles between layer packages (entry.py, on top, imports two of them and is imported by none)."""
    graph = {src: {d for d in dsts if _layer(d) in RANK or _layer(d) == "accel"}
             for src, dsts in _graph().items() if _layer(src) in RANK or _layer(src) == "accel"}
    cycles = _cycles(graph)
    assert not cycles, "\n".join(cycles)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the walkeeper modules it imports (a package counts as its __init__; lazy imports count too)."""
    modules = {_module_name(path): path for path in sorted(PKG.rglob("*.py"))}
    return {name: (_imports(path) & modules.keys()) - {name, "walkeeper"} for name, path in modules.items()}


def test_no_cycle_between_modules() -> None:
    """Within a layer too (cli/: main imports the command modules, which share cli/context.py and never
    import main back), so that no module ever sees another half initialised."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]  # the walk can fail
    cycles = _cycles(_module_graph())
    assert not cycles, "\n".join(cycles)


def test_cli_modules_register_on_main_without_importing_it() -> None:
    graph = _module_graph()
    importers = sorted(m for m, targets in graph.items() if "walkeeper.cli.main" in targets)
    assert importers == ["walkeeper.entry"], importers
    assert {"walkeeper.cli.wal", "walkeeper.cli.backups", "walkeeper.cli.operate"} <= graph["walkeeper.cli.main"]


def test_nothing_left_at_the_top_level() -> None:
    """Every module lives in its layer (design.md §1); only the console entry stays beside the package."""
    stray = sorted(p.name for p in PKG.glob("*.py") if p.name not in TOP_LEVEL)
    assert not stray, f"modules at the top level of walkeeper/, move each into its layer: {stray}"
    layers = set(RANK) | set(ONLY)
    unknown = sorted(p.name for p in PKG.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert not set(unknown) - layers, f"packages that are no layer of design.md §1: {sorted(set(unknown) - layers)}"


def test_the_checker_sees_imports() -> None:
    """The graph is not empty, so the checks above can fail."""
    graph = _graph()
    assert "walkeeper.core" in graph["walkeeper.codec"]


# Imports between commands: none (issue 12). A shared piece goes down into repo/, postgres/ or core/.
KNOWN_COMMAND_IMPORTS: set[tuple[str, str]] = set()


def test_commands_do_not_import_each_other() -> None:
    found = set()
    for path in sorted((PKG / "commands").glob("*.py")):
        for mod in _imports(path):
            parts = mod.split(".")
            if len(parts) >= 3 and parts[1] == "commands" and parts[2] != path.stem:
                found.add((path.stem, parts[2]))
    new = found - KNOWN_COMMAND_IMPORTS
    assert not new, f"commands importing commands (move the shared piece down): {sorted(new)}"
    gone = KNOWN_COMMAND_IMPORTS - found
    assert not gone, f"no longer imported, remove from KNOWN_COMMAND_IMPORTS: {sorted(gone)}"
