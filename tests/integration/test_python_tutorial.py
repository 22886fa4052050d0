"""docs/python.md's tutorial, followed in an empty folder: its files are written as shown, its commands
run (protoc, then pytest on the tutorial's own tests, which start a real node), so the page cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python.md"
_BLOCK = re.compile(
    r"<!-- tutorial-(?P<kind>file|run)(?:: (?P<path>\S+))? -->\n```\w+\n(?P<code>.*?)\n```", re.S
)


def test_the_tutorial_builds_a_tested_bank_service_from_an_empty_folder(tmp_path: Path) -> None:
    blocks = list(_BLOCK.finditer(PAGE.read_text()))
    assert [block["kind"] for block in blocks].count("file") == 4
    folder = tmp_path / "mybank"
    folder.mkdir()
    # `python` in the commands is this environment's interpreter, where chiefofstate is installed
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {key: value for key, value in env.items() if not key.startswith(("COS_", "PYTEST_"))}
    for block in blocks:
        if block["kind"] == "file":
            target = folder / block["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block["code"] + "\n")
            continue
        result = subprocess.run(
            [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                block["code"] + " -p no:cacheprovider"
                if block["code"].startswith("python -m pytest")
                else block["code"],
            ],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"{block['code']}\n{result.stdout}\n{result.stderr}"
    assert "2 passed" in result.stdout, result.stdout
