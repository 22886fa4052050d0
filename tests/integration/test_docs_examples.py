"""The HTTP and subscription examples of the README run against a real node, so the docs cannot rot.

A fenced block preceded by `<!-- doc-test: expect TEXT -->` is a shell script run with the real
`curl` (with `COS_HTTP` set to the node's HTTP API); its output must contain TEXT. A python block
preceded by `<!-- doc-test: python NAME -->` defines the coroutine NAME(cos_target), which is called. A
block preceded by `<!-- doc-test: cos-expect TEXT -->` runs with this project's `cos` on the PATH against
a node whose write handler is the bank's; its output must contain TEXT.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from chiefofstate.cli.processes import Process
from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration

DOCS = [Path(__file__).resolve().parents[2] / "README.md"]
_MARKED_BLOCK = re.compile(
    r"<!-- doc-test: (?P<directive>.*?) -->\n```(?P<language>\w+)\n(?P<code>.*?)\n```", re.S
)


def marked_blocks(language: str) -> list[tuple[str, str, str]]:
    """(document name, directive, code) of every marked block in `language`, in document order."""
    return [
        (doc.name, match["directive"], match["code"])
        for doc in DOCS
        for match in _MARKED_BLOCK.finditer(doc.read_text())
        if match["language"] == language
    ]


def test_the_readme_has_http_and_subscription_examples_to_run() -> None:
    assert len(marked_blocks("sh")) >= 4 and len(marked_blocks("python")) >= 1


@pytest.fixture
def node(node_factory: NodeFactory) -> Process:
    return node_factory(COS_SERVER_PROTOCOL="both", COS_SUBSCRIPTION_ENABLED="true")


@pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)
async def test_the_documented_curl_and_subscription_examples_work(node: Process) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("the curl binary is not installed")
    env = {"PATH": str(Path(curl).parent), "COS_HTTP": f"http://127.0.0.1:{node.ports['http']}"}
    for document, directive, script in marked_blocks("sh"):
        if not directive.startswith("expect "):
            continue  # a `cos` example: test_the_documented_cos_session_works
        expected = directive.removeprefix("expect ")
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{document}: {script}\n{result.stderr}"
        assert expected in result.stdout, f"{document}: {script}\ngot: {result.stdout}"

    # the subscription example continues the story: acc-1 holds 100.00 after the curl examples
    for document, directive, code in marked_blocks("python"):
        name = directive.removeprefix("python ")
        namespace: dict[str, Any] = {}
        exec(compile(code, document, "exec"), namespace)
        example: Callable[[str], Coroutine[Any, Any, int]] = namespace[name]
        balance = await asyncio.wait_for(example(f"127.0.0.1:{node.ports['grpc']}"), 20)
        assert balance == 10_000 + 2_500, document


@pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)
def test_the_documented_cos_session_works(node: Process, bank_handler: Process) -> None:
    blocks = [
        (doc, directive, code) for doc, directive, code in marked_blocks("sh") if "cos-expect" in directive
    ]
    assert blocks, "the README's Running it shows a cos session"
    handler_port = str(bank_handler.ports["write_side"])
    for document, directive, script in blocks:
        # The README's handler listens on 50051; the test's on a free port.
        script = script.replace("50051", handler_port)
        env = {
            **{key: value for key, value in node.env.items() if key.startswith("COS_")},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{document}: {script}\n{result.stdout}\n{result.stderr}"
        assert directive.removeprefix("cos-expect ") in result.stdout, f"{document}: got {result.stdout}"
