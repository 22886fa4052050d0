"""Generate the Python modules for every .proto the project owns.

Run `python scripts/gen_protos.py` after editing a .proto; `--check` exits 1
when the committed modules differ from what the sources produce (a test runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent

# (folder holding the .proto tree, output folder, Python package the output folder is)
TARGETS = [
    (ROOT / "src/chiefofstate/protos", ROOT / "src/chiefofstate/gen", "chiefofstate.gen"),
    (
        ROOT / "examples/bank/protos",
        ROOT / "examples/chiefofstate_examples/bank/gen",
        "chiefofstate_examples.bank.gen",
    ),
]


def _rewrite_imports(folder: Path, proto_packages: set[str], python_package: str) -> None:
    # protoc writes absolute imports named after the proto package (`from chief_of_state.v1
    # import common_pb2`); ours live inside a Python package, so prefix them.
    pattern = re.compile(r"^(from|import) (" + "|".join(map(re.escape, proto_packages)) + r")([. ])", re.M)
    for path in folder.rglob("*.py*"):
        if path.suffix not in {".py", ".pyi"}:
            continue
        text = path.read_text()
        path.write_text(pattern.sub(rf"\1 {python_package}.\2\3", text))


def _plugin(name: str) -> str:
    # mypy-protobuf installs its protoc plugins beside the interpreter, which need not be on PATH
    return str(Path(sys.executable).parent / name)


def generate(proto_root: Path, out: Path, python_package: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed on {proto_root}")
    top_packages = {p.split("/")[0] for p in protos}
    for directory in [out, *[d for d in out.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()
    _rewrite_imports(out, top_packages, python_package)


def _same_tree(left: Path, right: Path) -> bool:
    comparison = filecmp.dircmp(left, right)
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, comparison.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(left / d, right / d) for d in comparison.common_dirs if d != "__pycache__")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed modules are stale")
    args = parser.parse_args()
    stale = []
    for proto_root, out, package in TARGETS:
        if args.check:
            with tempfile.TemporaryDirectory() as scratch:
                fresh = Path(scratch) / "gen"
                generate(proto_root, fresh, package)
                shutil.rmtree(out / "__pycache__", ignore_errors=True)
                for cache in out.rglob("__pycache__"):
                    shutil.rmtree(cache, ignore_errors=True)
                if not out.exists() or not _same_tree(fresh, out):
                    stale.append(str(out.relative_to(ROOT)))
        else:
            shutil.rmtree(out, ignore_errors=True)
            generate(proto_root, out, package)
    if stale:
        print("stale generated modules (run python scripts/gen_protos.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
