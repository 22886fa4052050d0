"""Draw the package's room graph and fail on an import that runs back up the layers.

A room is a top-level subpackage (`chiefofstate/api/...` is room `api`) or a top-level module
(`chiefofstate/cli.py` is room `cli`). LAYERS below is the intended order, top to bottom: a room
imports rooms in lower layers, and rooms in its own layer as long as no cycle forms.

    python scripts/import_graph.py                # report; exit 1 on any violation
    python scripts/import_graph.py --report-only  # the same report, always exit 0
    python scripts/import_graph.py --json         # the same figures as one JSON dict
    python scripts/import_graph.py --detail       # also every import, file by file

The sources are read with `ast`, never imported, so a tree that does not import still gets a
picture. Imports made from strings (importlib.import_module) are not seen.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

LAYERS: list[list[str]] = [
    ["__main__"],
    ["cli", "testing"],
    ["node"],
    ["api", "sdk"],
    ["cluster"],
    ["entities", "readside", "subscription", "inspect"],
    ["journal", "writeside"],
    ["stores"],
    ["ports"],
    ["config", "telemetry"],
    ["aio", "core"],
    ["gen"],
]

# Rooms that only the listed rooms (and the room itself) may import.
ONLY_IMPORTED_BY: dict[str, set[str]] = {"stores": {"node"}}

# Rooms that may import only the listed rooms (and themselves).
# The developer kit (chiefofstate.sdk) speaks only the published protocols, so it needs nothing of the
# server: its handlers and client work behind upstream Chief of State as well.
LEAF_ROOMS: dict[str, set[str]] = {
    "telemetry": {"core", "gen", "aio", "config"},
    "sdk": {"core", "gen", "aio"},
}

# Generated code is as long as protoc makes it.
LINE_LIMIT_EXEMPT: frozenset[str] = frozenset({"gen"})

DEFAULT_MAX_LINES = 600

BACK_UP = "back up"
UNPLACED = "unplaced room"
ROOM_CYCLE = "room cycle"
MODULE_CYCLE = "module cycle"
ONLY_IMPORTED = "only imported by"
LEAF = "leaf room"
TOO_LONG = "too long"
UNRESOLVED = "unresolved"
FACE_IMPORT = "face import"
UNPARSABLE = "unparsable"

# Printing order; the most structural problems first.
KINDS = [
    BACK_UP,
    UNPLACED,
    ROOM_CYCLE,
    MODULE_CYCLE,
    ONLY_IMPORTED,
    LEAF,
    TOO_LONG,
    UNRESOLVED,
    FACE_IMPORT,
    UNPARSABLE,
]


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    lines: int
    is_package: bool


@dataclass(frozen=True)
class Import:
    source: str
    target: str | None  # None when the import names nothing the package has
    path: Path
    line: int
    text: str
    type_only: bool


@dataclass(frozen=True)
class Graph:
    package: str
    root: Path
    modules: dict[str, Module]
    imports: list[Import]
    unparsable: list[tuple[Path, int, str]]


@dataclass(frozen=True)
class Location:
    path: str
    line: int | None
    text: str = ""
    type_only: bool = False
    arrow: str = ""  # for a cycle: which of its arrows this import draws

    @property
    def place(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    @property
    def statement(self) -> str:
        return self.text + ("  [type-only]" if self.type_only else "")


@dataclass(frozen=True)
class Violation:
    kind: str
    message: str
    where: tuple[Location, ...]


@dataclass(frozen=True)
class Rules:
    layers: Sequence[Sequence[str]]
    only_imported_by: Mapping[str, set[str]]
    leaf_rooms: Mapping[str, set[str]]
    max_lines: int


DEFAULT_RULES = Rules(LAYERS, ONLY_IMPORTED_BY, LEAF_ROOMS, DEFAULT_MAX_LINES)


# --- reading the package -------------------------------------------------------------------------


def module_name(path: Path, root: Path, package: str) -> tuple[str, bool]:
    parts = path.relative_to(root).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join((package, *parts)), is_package


def room_of(name: str, package: str) -> str | None:
    """The room a dotted module name lives in; None for the package's face (its __init__)."""
    if name == package:
        return None
    return name[len(package) + 1 :].split(".")[0]


def ancestors(name: str) -> Iterator[str]:
    parts = name.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def import_statements(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, at any depth (functions, classes, try), with whether it is type-only."""
    pending: list[tuple[ast.AST, bool]] = [(tree, False)]
    while pending:
        node, type_only = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend((child, True) for child in node.body)
            pending.extend((child, type_only) for child in node.orelse)
        else:
            pending.extend((child, type_only) for child in ast.iter_child_nodes(node))


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def absolute_base(stmt: ast.ImportFrom, importer: Module, package: str) -> str | None:
    """The absolute module a `from X import ...` reads from; None when a relative one leaves the package."""
    if stmt.level == 0:
        return stmt.module
    # `from . import x` in a package's __init__ means the package itself, elsewhere the module's parent.
    anchor = importer.name.split(".") if importer.is_package else importer.name.split(".")[:-1]
    kept = len(anchor) - (stmt.level - 1)
    if kept < len(package.split(".")):
        return None
    base = ".".join(anchor[:kept])
    return f"{base}.{stmt.module}" if stmt.module else base


def statement_text(stmt: ast.Import | ast.ImportFrom, names: list[ast.alias]) -> str:
    if isinstance(stmt, ast.Import):
        return ast.unparse(ast.Import(names=names))
    return ast.unparse(ast.ImportFrom(module=stmt.module, names=names, level=stmt.level))


def resolve(
    stmt: ast.Import | ast.ImportFrom, importer: Module, known: set[str], package: str
) -> Iterator[tuple[str | None, list[ast.alias]]]:
    """The package modules one statement imports, each with the names that bring it in."""
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if in_package(alias.name, package):
                yield (alias.name if alias.name in known else None), [alias]
        return
    base = absolute_base(stmt, importer, package)
    if stmt.level == 0 and not in_package(base or "", package):
        return
    if base is None or base not in known:
        yield None, list(stmt.names)
        return
    # A name after `import` may be a submodule or just a name the module defines.
    by_target: dict[str, list[ast.alias]] = defaultdict(list)
    for alias in stmt.names:
        submodule = f"{base}.{alias.name}"
        by_target[submodule if submodule in known else base].append(alias)
    yield from by_target.items()


def read_package(root: Path, package: str) -> Graph:
    modules: dict[str, Module] = {}
    trees: dict[str, ast.Module] = {}
    unparsable: list[tuple[Path, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        name, is_package = module_name(path, root, package)
        text = path.read_text(encoding="utf-8")
        modules[name] = Module(name, path, len(text.splitlines()), is_package)
        try:
            trees[name] = ast.parse(text, filename=str(path))
        except SyntaxError as error:
            unparsable.append((path, error.lineno or 0, error.msg))
    # Folders without an __init__.py are namespace packages; they can be imported all the same.
    known = set(modules) | {parent for name in modules for parent in ancestors(name)}
    known = {name for name in known if in_package(name, package)}
    imports: list[Import] = []
    for name, tree in trees.items():
        importer = modules[name]
        for stmt, type_only in import_statements(tree):
            for target, names in resolve(stmt, importer, known, package):
                text = statement_text(stmt, names)
                imports.append(Import(name, target, importer.path, stmt.lineno, text, type_only))
    imports.sort(key=lambda imp: (str(imp.path), imp.line, imp.text))
    return Graph(package, root, modules, imports, unparsable)


# --- shaping the graph ---------------------------------------------------------------------------


def rooms_of(graph: Graph) -> dict[str, list[Module]]:
    rooms: dict[str, list[Module]] = defaultdict(list)
    for module in graph.modules.values():
        room = room_of(module.name, graph.package)
        if room is not None:
            rooms[room].append(module)
    return dict(sorted(rooms.items()))


def room_pair(imp: Import, package: str) -> tuple[str | None, str | None]:
    assert imp.target is not None
    return room_of(imp.source, package), room_of(imp.target, package)


def cross_room_imports(graph: Graph) -> list[Import]:
    """Resolved imports from one room into another; the face's own imports are not part of the graph."""
    result = []
    for imp in graph.imports:
        if imp.target is None:
            continue
        source, target = room_pair(imp, graph.package)
        if source is not None and target is not None and source != target:
            result.append(imp)
    return result


def room_edges(graph: Graph) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {room: set() for room in rooms_of(graph)}
    for imp in cross_room_imports(graph):
        source, target = room_pair(imp, graph.package)
        assert source is not None and target is not None
        edges[source].add(target)
    return edges


def reachable(edges: Mapping[str, set[str]], start: str) -> set[str]:
    seen = {start}
    pending = [start]
    while pending:
        for nxt in edges.get(pending.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                pending.append(nxt)
    return seen


def strongly_connected(edges: Mapping[str, set[str]]) -> list[frozenset[str]]:
    # The graphs are a few dozen nodes, so mutual reachability is plenty fast and plainly correct.
    reach = {node: reachable(edges, node) for node in edges}
    components = {frozenset(m for m in reach[node] if node in reach[m]) for node in edges}
    return sorted(components, key=sorted)


def cycles_in(edges: Mapping[str, set[str]]) -> list[frozenset[str]]:
    return [component for component in strongly_connected(edges) if len(component) > 1]


def floors(edges: Mapping[str, set[str]]) -> dict[str, int]:
    """Longest path from the bottom: a room importing nothing is floor 1.

    Rooms in a cycle share one floor (the path through a cycle has no longest length).
    """
    component_of = {node: component for component in strongly_connected(edges) for node in component}
    floor_of: dict[frozenset[str], int] = {}

    def floor(component: frozenset[str]) -> int:
        if component not in floor_of:
            below = {component_of[t] for node in component for t in edges[node]} - {component}
            floor_of[component] = 1 + max((floor(c) for c in below), default=0)
        return floor_of[component]

    return {node: floor(component_of[node]) for node in edges}


# --- checking ------------------------------------------------------------------------------------


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def at(imp: Import, arrow: str = "") -> Location:
    return Location(shown(imp.path), imp.line, imp.text, imp.type_only, arrow)


def layer_index(layers: Sequence[Sequence[str]]) -> dict[str, int]:
    return {room: depth for depth, layer in enumerate(layers) for room in layer}


def back_up_imports(graph: Graph, layers: Sequence[Sequence[str]]) -> list[Import]:
    depth = layer_index(layers)
    result = []
    for imp in cross_room_imports(graph):
        source, target = room_pair(imp, graph.package)
        if source in depth and target in depth and depth[target] < depth[source]:
            result.append(imp)
    return result


def check_back_up(graph: Graph, rules: Rules) -> Iterator[Violation]:
    for imp in back_up_imports(graph, rules.layers):
        source, target = room_pair(imp, graph.package)
        yield Violation(BACK_UP, f"{source} imports {target}, which is in a higher layer", (at(imp),))


def room_location(graph: Graph, room: str) -> Location:
    folder = graph.root / room
    return Location(shown(folder if folder.is_dir() else folder.with_suffix(".py")), None)


def check_unplaced(graph: Graph, rules: Rules) -> Iterator[Violation]:
    placed = layer_index(rules.layers)
    for room in rooms_of(graph):
        if room not in placed:
            message = f"room {room} is not in LAYERS"
            yield Violation(UNPLACED, message, (room_location(graph, room),))


def check_room_rules(graph: Graph, rules: Rules) -> Iterator[Violation]:
    for imp in cross_room_imports(graph):
        source, target = room_pair(imp, graph.package)
        assert source is not None and target is not None
        if target in rules.only_imported_by and source not in rules.only_imported_by[target]:
            allowed = ", ".join(sorted(rules.only_imported_by[target]))
            message = f"{source} imports {target}, which only {allowed} may import"
            yield Violation(ONLY_IMPORTED, message, (at(imp),))
        if source in rules.leaf_rooms and target not in rules.leaf_rooms[source]:
            allowed = ", ".join(sorted(rules.leaf_rooms[source]))
            message = f"{source} imports {target}, but may import only {allowed}"
            yield Violation(LEAF, message, (at(imp),))


def room_arrow(imp: Import, package: str) -> str:
    source, target = room_pair(imp, package)
    return f"{source} -> {target}"


def check_room_cycles(graph: Graph) -> Iterator[Violation]:
    crossing = cross_room_imports(graph)
    for cycle in cycles_in(room_edges(graph)):
        ties = [imp for imp in crossing if set(room_pair(imp, graph.package)) <= cycle]
        message = "rooms " + ", ".join(sorted(cycle)) + " import each other"
        yield Violation(ROOM_CYCLE, message, tuple(at(imp, room_arrow(imp, graph.package)) for imp in ties))


def module_edges(graph: Graph, room: str) -> tuple[dict[str, set[str]], list[Import]]:
    edges: dict[str, set[str]] = {
        name: set() for name in graph.modules if room_of(name, graph.package) == room
    }
    inside = []
    for imp in graph.imports:
        if imp.target is None or imp.target == imp.source:
            continue
        if room_of(imp.source, graph.package) == room == room_of(imp.target, graph.package):
            edges.setdefault(imp.source, set()).add(imp.target)
            edges.setdefault(imp.target, set())
            inside.append(imp)
    return edges, inside


def check_module_cycles(graph: Graph) -> Iterator[Violation]:
    for room in rooms_of(graph):
        edges, inside = module_edges(graph, room)
        for cycle in cycles_in(edges):
            ties = [imp for imp in inside if imp.source in cycle and imp.target in cycle]
            message = f"modules of {room} import each other: " + ", ".join(sorted(cycle))
            yield Violation(
                MODULE_CYCLE, message, tuple(at(imp, f"{imp.source} -> {imp.target}") for imp in ties)
            )


def check_lengths(graph: Graph, rules: Rules) -> Iterator[Violation]:
    for module in graph.modules.values():
        if room_of(module.name, graph.package) in LINE_LIMIT_EXEMPT:
            continue
        if module.lines > rules.max_lines:
            message = f"{module.lines} lines, more than {rules.max_lines}"
            yield Violation(TOO_LONG, message, (Location(shown(module.path), None),))


def check_unresolved(graph: Graph) -> Iterator[Violation]:
    for imp in graph.imports:
        if imp.target is None:
            yield Violation(UNRESOLVED, f"names no module of {graph.package}", (at(imp),))


def check_face_imports(graph: Graph) -> Iterator[Violation]:
    # The face imports from the top of the stack (node); a room reaching for it reaches up past everything.
    for imp in graph.imports:
        if imp.target == graph.package and imp.source != graph.package:
            message = "imports the package face; import the module that defines the name instead"
            yield Violation(FACE_IMPORT, message, (at(imp),))


def check_parsing(graph: Graph) -> Iterator[Violation]:
    for path, line, message in graph.unparsable:
        yield Violation(UNPARSABLE, message, (Location(shown(path), line),))


def violations(graph: Graph, rules: Rules = DEFAULT_RULES) -> list[Violation]:
    found = [
        *check_back_up(graph, rules),
        *check_unplaced(graph, rules),
        *check_room_cycles(graph),
        *check_module_cycles(graph),
        *check_room_rules(graph, rules),
        *check_lengths(graph, rules),
        *check_unresolved(graph),
        *check_face_imports(graph),
        *check_parsing(graph),
    ]
    return sorted(found, key=lambda v: (KINDS.index(v.kind), [(w.path, w.line or 0) for w in v.where]))


# --- reporting -----------------------------------------------------------------------------------


def analyse(graph: Graph, rules: Rules = DEFAULT_RULES) -> dict[str, Any]:
    """Every figure the report shows, as plain data (this is also the --json output)."""
    rooms = rooms_of(graph)
    edges = room_edges(graph)
    floor_of = floors(edges)
    depth = layer_index(rules.layers)
    room_cycles = cycles_in(edges)
    module_cycles = [c for room in rooms for c in cycles_in(module_edges(graph, room)[0])]
    found = violations(graph, rules)
    top = max(floor_of.values(), default=0)
    summary = {
        "rooms": len(rooms),
        "floors": top,
        "arrows": sum(len(targets) for targets in edges.values()),
        "back_up": len(back_up_imports(graph, rules.layers)),
        "cycles": len(room_cycles) + len(module_cycles),
        "violations": len(found),
    }
    return {
        "package": graph.package,
        "root": shown(graph.root),
        "rooms": {
            room: {
                "files": len(modules),
                "lines": sum(module.lines for module in modules),
                "layer": depth[room] + 1 if room in depth else None,
                "floor": floor_of[room],
            }
            for room, modules in rooms.items()
        },
        "floors": [
            {"floor": floor, "rooms": sorted(room for room, f in floor_of.items() if f == floor)}
            for floor in range(top, 0, -1)
        ],
        "arrows": {room: sorted(targets) for room, targets in edges.items() if targets},
        "face_imports": face_targets(graph),
        "room_cycles": [sorted(cycle) for cycle in room_cycles],
        "module_cycles": [sorted(cycle) for cycle in module_cycles],
        "violations": [
            {
                "kind": v.kind,
                "message": v.message,
                "where": [
                    {
                        "path": w.path,
                        "line": w.line,
                        "import": w.text,
                        "type_only": w.type_only,
                        "arrow": w.arrow,
                    }
                    for w in v.where
                ],
            }
            for v in found
        ],
        "violations_by_kind": dict(Counter(v.kind for v in found)),
        "imports": [
            {
                "path": shown(imp.path),
                "line": imp.line,
                "import": imp.text,
                "from": imp.source,
                "to": imp.target,
                "type_only": imp.type_only,
            }
            for imp in graph.imports
        ],
        "summary": summary,
    }


def face_targets(graph: Graph) -> list[str]:
    rooms = {
        room_of(imp.target, graph.package)
        for imp in graph.imports
        if imp.source == graph.package and imp.target is not None
    }
    return sorted(room for room in rooms if room is not None)


def summary_line(summary: Mapping[str, int]) -> str:
    return (
        f"rooms {summary['rooms']}, floors {summary['floors']}, arrows {summary['arrows']}, "
        f"back up {summary['back_up']}, cycles {summary['cycles']}, violations {summary['violations']}"
    )


def render_violation(violation: Mapping[str, Any]) -> Iterator[str]:
    where = [
        Location(w["path"], w["line"], w["import"], w["type_only"], w["arrow"]) for w in violation["where"]
    ]
    if len(where) == 1 and not where[0].arrow:
        statement = f"  ({where[0].statement})" if where[0].text else ""
        yield f"  {where[0].place}: {violation['kind']}: {violation['message']}{statement}"
        return
    yield f"  {violation['kind']}: {violation['message']}"
    # A cycle may be tied by dozens of imports; one line per arrow keeps it readable (--json has each one).
    by_arrow: dict[str, list[Location]] = defaultdict(list)
    for location in where:
        by_arrow[location.arrow].append(location)
    width = max(len(arrow) for arrow in by_arrow)
    for arrow, locations in sorted(by_arrow.items()):
        yield f"      {arrow:<{width}}  {lines_by_file(locations)}"


def lines_by_file(locations: Iterable[Location]) -> str:
    """`a.py:3, 9 (type-only); b.py:4`: where one arrow's imports are, compactly."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for location in locations:
        by_file[location.path].append(f"{location.line}" + (" (type-only)" if location.type_only else ""))
    return "; ".join(f"{path}:" + ", ".join(lines) for path, lines in by_file.items())


def render_text(report: Mapping[str, Any], detail: bool) -> Iterator[str]:
    rooms = report["rooms"]
    yield f"{report['package']} ({report['root']})"
    yield ""
    width = max((len(room) for room in rooms), default=4)
    yield f"  {'room':<{width}}  files  lines  layer (declared, 1 = top; - = not in LAYERS)"
    for room, info in rooms.items():
        layer = "-" if info["layer"] is None else str(info["layer"])
        yield f"  {room:<{width}}  {info['files']:>5}  {info['lines']:>5}  {layer:>5}"
    yield ""
    yield "floors, from the imports (top first)"
    for entry in report["floors"]:
        yield f"  {entry['floor']:>2}  " + ", ".join(entry["rooms"])
    yield ""
    yield f"arrows ({report['summary']['arrows']})"
    for room, targets in report["arrows"].items():
        yield f"  {room:<{width}} -> " + ", ".join(targets)
    if report["face_imports"]:
        yield "  (face, not checked) -> " + ", ".join(report["face_imports"])
    yield ""
    yield f"imports that run back up: {report['summary']['back_up']}"
    yield f"cycles: {report['summary']['cycles']}"
    for cycle in report["room_cycles"]:
        yield "  rooms: " + ", ".join(cycle)
    for cycle in report["module_cycles"]:
        yield "  modules: " + ", ".join(cycle)
    yield ""
    by_kind = ", ".join(f"{kind} {n}" for kind, n in report["violations_by_kind"].items())
    yield f"violations: {len(report['violations'])}" + (f" ({by_kind})" if by_kind else "")
    for violation in report["violations"]:
        yield from render_violation(violation)
    if detail:
        yield ""
        yield from render_imports(report["imports"])
    yield ""
    yield summary_line(report["summary"])


def render_imports(imports: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    yield "imports"
    current = None
    for imp in imports:
        if imp["path"] != current:
            current = imp["path"]
            yield f"  {current}"
        mark = "  [type-only]" if imp["type_only"] else ""
        target = imp["to"] or "?"
        yield f"    {imp['line']:>4}  {imp['import']}  -> {target}{mark}"


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=REPO / "src" / "chiefofstate", help="the package folder")
    parser.add_argument("--package", default="chiefofstate", help="the package's import name")
    parser.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES, help="longest module allowed")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON dict")
    parser.add_argument("--detail", action="store_true", help="also list every import")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even when there are violations")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.root
    if not root.is_dir():
        print(f"import_graph: no package folder at {root}", file=sys.stderr)
        return 2
    rules = Rules(LAYERS, ONLY_IMPORTED_BY, LEAF_ROOMS, args.max_lines)
    report = analyse(read_package(root, args.package), rules)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(render_text(report, args.detail)))
    if args.report_only:
        return 0
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
