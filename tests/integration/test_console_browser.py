"""The admin console in a real browser (Debian's chromium, headless, through its chromedriver) against a
real `cos serve` with the bank example's write and read handlers (docs/console.md).

One node and one browser session for the module: sign in with an admin token, open every page, pause,
resume and skip through the read-sides page (the effect checked through the gRPC
ReadSideManagerService), look up an entity, get clear messages for bad input, and watch the live tail
receive a new event. Screenshots land in the test's directory, and in CONSOLE_SCREENSHOTS_DIR when set
(how docs/console-images/ is refreshed)."""

from __future__ import annotations

import collections
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from chiefofstate.api.readside_manager import STATE_TRAILER
from chiefofstate.cli.processes import Process, start_bank_read_handler, start_node_on_free_ports
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import base_env
from tests.support.owned import stop_all
from tests.support.readside_processes import FAST, manager, open_and_deposit, read_side

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_TOKEN = "console-admin-token"
CLIENT_TOKEN = "console-client-token"
WAIT_S = 20.0


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Every call of the test's gRPC clients carries the admin token."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {ADMIN_TOKEN}")]
        fields = details._asdict() if hasattr(details, "_asdict") else {}
        call_details = _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            fields.get("compression", getattr(details, "compression", None)),
        )
        return continuation(call_details, request)


_CallDetails = collections.namedtuple(
    "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


@pytest.fixture(scope="module")
def console_node(tmp_path_factory: pytest.TempPathFactory, bank_handler: Process) -> Iterator[Process]:
    directory = tmp_path_factory.mktemp("console")
    tokens = directory / "tokens"
    tokens.write_text(f"{ADMIN_TOKEN} admin\n{CLIENT_TOKEN} client\n")
    reader = start_bank_read_handler(directory / "logs", deliveries=directory / "deliveries.jsonl")
    node = None
    try:
        node = start_node_on_free_ports(
            {**base_env(bank_handler.ports["write_side"]), "COS_DB_PATH": str(directory / "cos.db")},
            directory / "logs",
            name="console-node",
            **FAST,
            COS_SUBSCRIPTION_ENABLED="true",
            COS_AUTH_TOKENS_FILE=str(tokens),
            COS_CONSOLE_SAMPLE_INTERVAL="1s",
            **read_side("balances", reader.ports["read_side"]),
            **read_side("audit", reader.ports["read_side"]),
            **read_side("ledger", reader.ports["read_side"], ENABLED="false"),
        )
        yield node
    finally:
        stop_all([process for process in (node, reader) if process is not None], kill=True)


@pytest.fixture(scope="module")
def channel(console_node: Process) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{console_node.ports['grpc']}") as opened:
        yield grpc.intercept_channel(opened, _Bearer())


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-gpu",
        "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[WebDriver, str], None]:
    directory = tmp_path_factory.mktemp("screenshots")
    published = os.environ.get("CONSOLE_SCREENSHOTS_DIR")

    def take(driver: WebDriver, name: str) -> None:
        path = directory / f"{name}.png"
        assert driver.save_screenshot(str(path))
        if published:
            shutil.copy(path, Path(published) / path.name)

    return take


def _until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = check()
        except Exception:  # an element replaced by a refresh while it was read
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _shard_state(channel: grpc.Channel, read_side_id: str, shard: int) -> tuple[int, str]:
    """(offset, state summary) of one projection, as the gRPC manager service answers them."""
    reply, call = manager(channel).GetLatestOffsetByShard.with_call(
        mpb.GetLatestOffsetByShardRequest(read_side_id=read_side_id, cluster_shard_number=shard), timeout=10
    )
    trailer = dict(call.trailing_metadata() or ())
    return reply.offsets.offset, str(trailer.get(STATE_TRAILER, ""))


def _act(driver: WebDriver, base: str, read_side_id: str, shard: int, action: str) -> str:
    """Use the action link on the shard's row, read the confirmation, confirm; returns the notice."""
    driver.get(f"{base}read-sides")
    section = driver.find_element(By.CSS_SELECTOR, f'section[data-read-side="{read_side_id}"]')
    row = section.find_element(By.CSS_SELECTOR, f'tr[data-shard="{shard}"]')
    row.find_element(By.LINK_TEXT, action).click()
    what = _until(lambda: _text(driver, "#what-happens"), "the confirmation")
    driver.find_element(By.ID, "confirm").click()
    notice = _until(lambda: _text(driver, "#notice"), f"the notice of {action}")
    assert f"{action} of shard {shard} of {read_side_id} done" in notice
    return str(what)


def test_the_console_in_a_browser(
    console_node: Process,
    channel: grpc.Channel,
    browser: WebDriver,
    screenshots: Callable[[WebDriver, str], None],
) -> None:
    base = f"http://127.0.0.1:{console_node.ports['management']}/admin/"
    stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
    for number in range(4):
        open_and_deposit(stub, f"acct-{number}", deposits=3)

    # Signing in: a client token is not enough, an admin token opens the overview.
    browser.get(base)
    _until(lambda: browser.find_element(By.ID, "token"), "the sign-in page")
    browser.find_element(By.ID, "token").send_keys(CLIENT_TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    assert "admin role" in _until(lambda: _text(browser, "#error-message"), "the refusal")
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    assert _until(lambda: _text(browser, "#node-health"), "the overview") == "ready"
    assert "SQLite" in _text(browser, "#node-store")
    time.sleep(2.5)  # two metric readings, so the charts have a line
    browser.refresh()
    screenshots(browser, "overview")

    # Read sides: every shard of both enabled read sides, then pause, resume and skip through the page.
    browser.get(f"{base}read-sides")
    rows = browser.find_elements(By.CSS_SELECTOR, 'section[data-read-side="balances"] tbody tr')
    assert len(rows) == 16
    screenshots(browser, "read-sides")
    entity = "acct-skip"
    shard = shard_of(entity, 16)
    what = _act(browser, base, "balances", shard, "pause")
    assert "stops delivering" in what
    _until(lambda: f"paused={shard}" in _shard_state(channel, "balances", shard)[1], "paused over gRPC")
    open_and_deposit(stub, entity)  # waits, undelivered, while the shard is paused
    before, _ = _shard_state(channel, "balances", shard)
    assert "never receive" in _act(browser, base, "balances", shard, "skip")
    after, states = _until(
        lambda: (state := _shard_state(channel, "balances", shard))[0] > before and state, "the skip"
    )
    assert f"paused={shard}" in states  # skipping leaves the pause as it was
    _act(browser, base, "balances", shard, "resume")
    _until(lambda: f"running={shard}" in _shard_state(channel, "balances", shard)[1], "running over gRPC")
    assert _shard_state(channel, "balances", shard)[0] >= after

    # Actions the node cannot do get a sentence on the page, not a trace.
    browser.get(f"{base}read-sides/confirm?action=pause&read_side=ledger")
    assert "disabled" in _until(lambda: _text(browser, "#error-message"), "the disabled read side")
    browser.get(f"{base}read-sides/confirm?action=pause&read_side=nope")
    assert "nope" in _until(lambda: _text(browser, "#error-message"), "the unknown read side")
    assert "Traceback" not in browser.page_source

    # Entities: a real one decoded, an unknown one (with markup in its id) shown as text.
    browser.get(f"{base}entities")
    browser.find_element(By.ID, "entity-id").send_keys("acct-1")
    browser.find_element(By.ID, "look-up").click()
    assert _until(lambda: _text(browser, "#entity-revision"), "the entity") == "4"
    assert '"balance": "103"' in _text(browser, "#entity-state")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#entity-events tbody tr")) == 4
    screenshots(browser, "entity")
    hostile = "<script>window.owned=1</script>"
    browser.get(f"{base}entities")
    browser.find_element(By.ID, "entity-id").send_keys(hostile)
    browser.find_element(By.ID, "look-up").click()
    message = _until(lambda: _text(browser, "#error-message"), "the unknown entity")
    assert hostile in message and "no entity" in message
    assert browser.execute_script("return window.owned === undefined")
    browser.get(f"{base}entities?id=a%0Ab")
    assert "entity ID" in _until(lambda: _text(browser, "#error-message"), "the odd id")

    # The journal, node-wide.
    browser.get(f"{base}journal")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#journal-events tbody tr")) >= 17
    browser.get(f"{base}journal?from=2000-01-01T00:00:00&type=AccountOpened")
    assert (
        len(browser.find_elements(By.CSS_SELECTOR, "#journal-events tbody tr")) == 5
    )  # acct-0..3, acct-skip
    browser.get(f"{base}journal?from=2999-01-01T00:00:00")
    assert "no events here" in _text(browser, "#journal-events")
    browser.get(f"{base}journal?from=yesterday")
    assert "from must be a date and time" in _until(lambda: _text(browser, "#error-message"), "the bad time")

    # Live tail: a deposit made now appears; pausing stops following.
    browser.get(f"{base}tail")
    _until(lambda: _text(browser, "#tail-status") == "following", "the tail to follow")
    time.sleep(1.5)  # the tail's subscription is open once the first poll has answered
    open_and_deposit(stub, "acct-live", deposits=1)
    _until(lambda: "acct-live" in _text(browser, "#tail-rows"), "the new event in the tail")
    screenshots(browser, "tail")
    browser.find_element(By.ID, "tail-pause").click()
    assert _text(browser, "#tail-status") == "paused"

    # Cluster: a node alone owns every shard.
    browser.get(f"{base}cluster")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#shard-map tbody tr")) == 16
    screenshots(browser, "cluster")

    # Signing out ends the session: pages ask for a token again.
    browser.get(base)
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    _until(lambda: browser.find_element(By.ID, "token"), "the sign-in page after signing out")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _request(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with opener.open(request, timeout=10) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def test_actions_need_an_admin_token_and_a_post_from_the_consoles_own_page(
    console_node: Process, channel: grpc.Channel
) -> None:
    base = f"http://127.0.0.1:{console_node.ports['management']}/admin/"
    origin = f"http://127.0.0.1:{console_node.ports['management']}"
    status, headers, _ = _request(base)
    assert status == 303 and headers["Location"].startswith("/admin/login")
    status, _, body = _request(f"{base}read-sides", headers={"Authorization": f"Bearer {CLIENT_TOKEN}"})
    assert status == 403 and "admin role" in body
    status, headers, body = _request(f"{base}read-sides", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]

    # A signed-in browser's cookie is not enough for a form sent from another site.
    status, headers, _ = _request(
        f"{base}login", data=f"token={ADMIN_TOKEN}".encode(), headers={"Origin": origin}
    )
    assert status == 303
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    form = b"action=pause&read_side=audit&shard=0"
    status, _, body = _request(
        f"{base}read-sides/act", data=form, headers={"Cookie": cookie, "Origin": "http://evil.example"}
    )
    assert status == 403 and "own page" in body
    status, _, body = _request(f"{base}read-sides/act", data=form, headers={"Cookie": cookie})
    assert status == 403
    assert "running=0" in _shard_state(channel, "audit", 0)[1]
    status, headers, _ = _request(
        f"{base}read-sides/act", data=form, headers={"Cookie": cookie, "Origin": origin}
    )
    assert status == 303 and "pause" in urllib.parse.unquote_plus(headers["Location"])
    _until(lambda: "paused=0" in _shard_state(channel, "audit", 0)[1], "paused over gRPC")
    resume = b"action=resume&read_side=audit&shard=0"
    status, _, _ = _request(
        f"{base}read-sides/act", data=resume, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert status == 303
    _until(lambda: "running=0" in _shard_state(channel, "audit", 0)[1], "running over gRPC")
    status, _, body = _request(f"{base}journal?after=-3", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 400 and "after must be a whole number" in body
    status, _, body = _request(f"{base}login?" + "&".join(["next=x"] * 100))
    assert status == 400 and "cannot be read" in body
