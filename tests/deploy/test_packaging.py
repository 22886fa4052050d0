"""What a Python user installs: the sdist and wheel as built from this tree, checked as PyPI would check
them, and the generated client stubs usable with nothing but protobuf and grpcio beside them."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import google.protobuf
import grpc
import pytest
import typing_extensions

import chiefofstate

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Every stub module a client or a handler author imports.
STUB_MODULES = [
    "chiefofstate.gen.chief_of_state.v1.service_pb2_grpc",
    "chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc",
    "chiefofstate.gen.chief_of_state.v1.readside_pb2_grpc",
    "chiefofstate.gen.chief_of_state.v1.manager_pb2_grpc",
    "chiefofstate.gen.chief_of_state.v1.persistence_pb2",
    "chiefofstate_examples.bank.gen.bank.v1.bank_pb2",
]
# What the server needs and a client must not be made to install.
SERVER_ONLY = ["fastapi", "uvicorn", "asyncpg", "aiosqlite", "httpx", "opentelemetry", "typer", "yaml"]

IMPORT_STUBS = textwrap.dedent(
    f"""
    import importlib, sys
    for name in {STUB_MODULES!r}:
        importlib.import_module(name)
    from chiefofstate.gen.chief_of_state.v1 import service_pb2
    request = service_pb2.GetStateRequest(entity_id="a")
    assert service_pb2.GetStateRequest.FromString(request.SerializeToString()).entity_id == "a"
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({SERVER_ONLY!r}))
    assert not loaded, loaded
    print("stubs ok")
    """
)


def _site_packages(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def _link_protobuf_and_grpcio(site: Path) -> None:
    """The dev environment's protobuf and grpcio (with typing_extensions, grpcio's one dependency),
    linked into `site`: the same versions, nothing downloaded."""
    (site / "google").mkdir(exist_ok=True)
    (site / "google/protobuf").symlink_to(Path(google.protobuf.__file__).parent)
    (site / "grpc").symlink_to(Path(grpc.__file__).parent)
    (site / "typing_extensions.py").symlink_to(typing_extensions.__file__)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The sdist, and the wheel built from that sdist (so a file missing from the sdist shows)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    yield sdist, wheel


def test_the_stubs_import_with_only_protobuf_and_grpcio(tmp_path: Path) -> None:
    """From the source tree: python -S sees the standard library, protobuf, grpcio and the package."""
    path = tmp_path / "path"
    path.mkdir()
    _link_protobuf_and_grpcio(path)
    (path / "chiefofstate").symlink_to(ROOT / "src/chiefofstate")
    (path / "chiefofstate_examples").symlink_to(ROOT / "examples/chiefofstate_examples")
    script = f"import sys; sys.path.insert(0, {str(path)!r})\n" + IMPORT_STUBS
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stubs ok"


def test_the_wheel_and_sdist_pass_twine_check_and_hold_what_they_should(dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    checked = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"chiefofstate", "chiefofstate_examples"}
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "chiefofstate/stores/postgres/migrations/0007_shard_locks.sql" in names
    assert "chiefofstate/protos/chief_of_state/v1/service.proto" in names
    assert "chiefofstate/py.typed" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"Version: {chiefofstate.__version__}" in text
    assert "License-Expression: Apache-2.0" in text
    assert "Classifier: Programming Language :: Python :: 3.11" in text
    assert "Project-URL: " in text
    # Ranges, not pins, for what the server runs on (the dev extra pins its code generators on purpose).
    runtime = [
        line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert any(line.startswith("Requires-Dist: grpcio") for line in runtime)
    assert not [line for line in runtime if "==" in line], runtime

    with tarfile.open(sdist) as archive:
        members = {member.name.split("/", 1)[1] for member in archive.getmembers() if "/" in member.name}
    assert {"LICENSE", "pyproject.toml", "README.md"} <= members


def test_the_wheel_serves_clients_in_a_venv_with_only_protobuf_and_grpcio(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    """A fresh venv holding protobuf, grpcio and the wheel unpacked as an installer lays it out."""
    _, wheel = dists
    env = tmp_path / "client-venv"
    venv.EnvBuilder(with_pip=False).create(env)
    site = _site_packages(env)
    _link_protobuf_and_grpcio(site)
    zipfile.ZipFile(wheel).extractall(site)
    done = subprocess.run(
        [str(env / "bin/python"), "-c", IMPORT_STUBS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stubs ok"
    # The server itself is not usable there, and says which dependency is missing.
    serve = subprocess.run(
        [str(env / "bin/python"), "-c", "from chiefofstate import Node"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 1 and "ModuleNotFoundError" in serve.stderr


def test_cos_version_prints_the_package_version() -> None:
    done = subprocess.run([str(BIN / "cos"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cos {chiefofstate.__version__}"
