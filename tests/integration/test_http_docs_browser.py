"""/docs in a real browser (Debian's chromium, headless) that cannot reach the internet: Swagger UI
must render both operations from the node's own files. `.ci/packages` installs chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration

# Every request except those to the node goes to a proxy that is not there, and every name but
# 127.0.0.1 fails to resolve: a page that needs a CDN stays blank.
OFFLINE = [
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: run `make packages` (.ci/packages installs it)")
    return found


def browse(url: str, *extra: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={home}",
            *OFFLINE,
            # lets the page's scripts run (fetch /openapi.json, render) before the DOM is taken
            "--virtual-time-budget=20000",
            "--window-size=1280,1400",
            *extra,
            url,
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)
def test_swagger_ui_renders_both_operations_offline(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory(COS_SERVER_PROTOCOL="http")
    url = f"http://127.0.0.1:{node.ports['http']}/docs"

    dom = browse(url, "--dump-dom", home=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for path in ("/v1/commands/{entityId}/process", "/v1/entities/{entityId}/state"):
        assert f'data-path="{path}"' in dom.stdout, dom.stdout[-3000:]
    assert "ProcessCommand" in dom.stdout and "GetState" in dom.stdout

    shot = tmp_path / "docs.png"
    taken = browse(url, f"--screenshot={shot}", home=tmp_path / "profile-shot")
    assert taken.returncode == 0, taken.stderr[-2000:]
    image = shot.read_bytes()
    # a real picture of the page, not an empty canvas: PNG, and far larger than a blank one (about 8 KB)
    assert image.startswith(b"\x89PNG") and len(image) > 30_000
