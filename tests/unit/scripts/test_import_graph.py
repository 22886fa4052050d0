from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "import_graph.py"


def _load_script() -> ModuleType:
    # scripts/ is not a package; dataclasses need the module registered before it runs.
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ig = _load_script()

# A small package that follows LAYERS: __main__ > cli > node > api > config > core > gen.
CLEAN = {
    "__init__.py": "from chiefofstate.node import Node\n",
    "__main__.py": "from chiefofstate.cli import main\n",
    "cli.py": "from chiefofstate.node import Node\n\ndef main() -> None: ...\n",
    "node.py": "from chiefofstate.api.server import serve\nfrom chiefofstate.config import settings\n",
    "api/__init__.py": "",
    "api/server.py": "from chiefofstate.core.errors import CosError\n\ndef serve() -> None: ...\n",
    "config/__init__.py": "",
    "config/settings.py": "from chiefofstate.core import errors\n",
    "core/__init__.py": "",
    "core/errors.py": "from chiefofstate.gen import common_pb2\n\nclass CosError(Exception): ...\n",
    "gen/__init__.py": "",
    "gen/common_pb2.py": "X = 1\n",
}


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "chiefofstate"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(root: Path, *extra: str) -> int:
    code: int = ig.main(["--root", str(root), *extra])
    return code


def violations_of(root: Path, max_lines: int = ig.DEFAULT_MAX_LINES) -> list[Any]:
    rules = ig.Rules(ig.LAYERS, ig.ONLY_IMPORTED_BY, ig.LEAF_ROOMS, max_lines)
    found: list[Any] = ig.violations(ig.read_package(root, "chiefofstate"), rules)
    return found


def kinds(found: list[Any]) -> list[str]:
    return [v.kind for v in found]


def test_clean_layered_package_passes_with_floors_from_the_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_package(tmp_path, CLEAN)

    assert run(root) == 0

    floors = ig.floors(ig.room_edges(ig.read_package(root, "chiefofstate")))
    assert floors == {"gen": 1, "core": 2, "config": 3, "api": 3, "node": 4, "cli": 5, "__main__": 6}
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "rooms 7, floors 6, arrows 7, back up 0, cycles 0, violations 0"


def test_import_that_runs_back_up_is_reported_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = dict(CLEAN)
    files["core/errors.py"] += "\n\ndef late() -> None:\n    from chiefofstate.api import server\n"
    root = make_package(tmp_path, files)

    assert run(root) == 1

    out = capsys.readouterr().out
    assert "core/errors.py:7: back up: core imports api" in out
    assert "from chiefofstate.api import server" in out
    assert "back up 1," in out.splitlines()[-1]


def test_report_only_exits_0_despite_violations(tmp_path: Path) -> None:
    files = {**CLEAN, "core/bad.py": "import chiefofstate.node\n"}
    root = make_package(tmp_path, files)

    assert run(root) == 1
    assert run(root, "--report-only") == 0


def test_room_cycle_within_one_layer_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {
        **CLEAN,
        "entities/__init__.py": "",
        "entities/host.py": "from chiefofstate.readside import runtime\n",
        "readside/runtime.py": "import chiefofstate.entities.host\n",
    }
    root = make_package(tmp_path, files)

    found = violations_of(root)

    assert kinds(found) == [ig.ROOM_CYCLE]
    assert run(root) == 1
    out = capsys.readouterr().out
    assert "room cycle: rooms entities, readside import each other" in out
    assert "entities -> readside" in out and "entities/host.py:1" in out
    assert "readside -> entities" in out and "readside/runtime.py:1" in out


def test_module_cycle_inside_a_room_is_found(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "core/a.py": "from chiefofstate.core.b import B\nA = 1\n",
        "core/b.py": "from chiefofstate.core import a\nB = 2\n",
    }
    root = make_package(tmp_path, files)

    (cycle,) = violations_of(root)

    assert cycle.kind == ig.MODULE_CYCLE
    assert "chiefofstate.core.a, chiefofstate.core.b" in cycle.message
    assert {(Path(w.path).name, w.line) for w in cycle.where} == {("a.py", 1), ("b.py", 1)}


def test_relative_function_and_type_checking_imports_are_resolved(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "api/__init__.py": "from .server import serve\n",
        "api/server.py": (
            "from typing import TYPE_CHECKING\n"
            "from .. import config\n"
            "from ..core import errors, NAME\n"
            "from . import rpc\n"
            "if TYPE_CHECKING:\n"
            "    from chiefofstate.gen import common_pb2\n"
            "else:\n"
            "    from chiefofstate.config import settings\n"
            "def serve() -> None:\n"
            "    import chiefofstate.core.errors as e\n"
        ),
        "api/rpc.py": "",
    }
    root = make_package(tmp_path, files)

    graph = ig.read_package(root, "chiefofstate")

    found = {(imp.source, imp.line, imp.target, imp.type_only) for imp in graph.imports}
    assert ("chiefofstate.api", 1, "chiefofstate.api.server", False) in found
    server = {(imp.line, imp.target, imp.type_only) for imp in graph.imports if imp.source.endswith("server")}
    assert server == {
        (2, "chiefofstate.config", False),
        (3, "chiefofstate.core.errors", False),
        (3, "chiefofstate.core", False),  # NAME is no module: it comes from the package's __init__
        (4, "chiefofstate.api.rpc", False),
        (6, "chiefofstate.gen.common_pb2", True),
        (8, "chiefofstate.config.settings", False),
        (10, "chiefofstate.core.errors", False),
    }
    # The type-only import counts like the others: it alone draws the arrow api -> gen.
    assert ig.room_edges(graph)["api"] == {"config", "core", "gen"}
    assert violations_of(root) == []


def test_type_only_imports_are_marked_in_the_detailed_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        **CLEAN,
        "api/server.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chiefofstate.core import errors\n"
        ),
    }
    root = make_package(tmp_path, files)

    assert run(root, "--detail") == 0

    out = capsys.readouterr().out
    assert "3  from chiefofstate.core import errors  -> chiefofstate.core.errors  [type-only]" in out


def test_unplaced_room_is_a_violation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_package(tmp_path, {**CLEAN, "loose.py": "from chiefofstate.core import errors\n"})

    assert run(root) == 1

    out = capsys.readouterr().out
    assert "loose.py: unplaced room: room loose is not in LAYERS" in out


def test_stores_may_be_imported_only_by_node(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "stores/__init__.py": "",
        "stores/sqlite.py": "from chiefofstate.core import errors\n",
        "node.py": CLEAN["node.py"] + "from chiefofstate.stores import sqlite\n",
    }
    assert violations_of(make_package(tmp_path / "ok", files)) == []

    files["api/server.py"] += "from chiefofstate.stores.sqlite import open_store\n"
    found = violations_of(make_package(tmp_path / "bad", files))

    # api sits above stores, so this is no back-up import; only the stores rule catches it.
    assert kinds(found) == [ig.ONLY_IMPORTED]
    (where,) = found[0].where
    assert where.path.endswith("api/server.py") and where.line == 4


def test_telemetry_imports_nothing_but_its_leaf_rooms(tmp_path: Path) -> None:
    files = {
        **CLEAN,
        "journal/__init__.py": "",
        "telemetry/__init__.py": "",
        "telemetry/tracing.py": (
            "from chiefofstate.config import settings\nfrom chiefofstate.journal import x\n"
        ),
    }
    found = violations_of(make_package(tmp_path, files))

    assert sorted(kinds(found)) == sorted([ig.BACK_UP, ig.LEAF])


def test_over_long_module_is_a_violation_but_gen_is_exempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {**CLEAN, "core/big.py": "x = 1\n" * 11, "gen/big_pb2.py": "x = 1\n" * 50}
    root = make_package(tmp_path, files)

    assert run(root, "--max-lines", "10") == 1

    out = capsys.readouterr().out
    assert "core/big.py: too long: 11 lines, more than 10" in out
    assert "big_pb2" not in out
    assert run(root, "--max-lines", "11") == 0


def test_unresolved_and_face_imports_are_violations(tmp_path: Path) -> None:
    server = "from chiefofstate.core.gone import x\nfrom chiefofstate import Node\n"
    files = {**CLEAN, "api/server.py": server}
    found = violations_of(make_package(tmp_path, files))

    assert kinds(found) == [ig.UNRESOLVED, ig.FACE_IMPORT]


def test_json_output_has_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {**CLEAN, "core/bad.py": "from chiefofstate.api import server\n", "loose.py": ""}
    root = make_package(tmp_path, files)

    assert run(root, "--json") == 1

    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == {
        "rooms": 8,
        "floors": 6,
        "arrows": 8,
        "back_up": 1,
        "cycles": 1,
        "violations": 3,
    }
    assert report["violations_by_kind"] == {ig.BACK_UP: 1, ig.UNPLACED: 1, ig.ROOM_CYCLE: 1}
    assert report["room_cycles"] == [["api", "core"]]
    assert report["rooms"]["core"] == {"files": 3, "lines": 4, "layer": 11, "floor": 2}
    assert report["rooms"]["api"]["floor"] == 2  # rooms in a cycle share a floor
    assert report["floors"][0] == {"floor": 6, "rooms": ["__main__"]}
    assert report["floors"][-1] == {"floor": 1, "rooms": ["gen", "loose"]}
    assert report["arrows"]["node"] == ["api", "config"]
    assert report["face_imports"] == ["node"]


def test_real_tree_gives_a_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert ig.main(["--report-only"]) == 0

    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("rooms ") and last.split(", ")[-1].startswith("violations ")
