"""Bearer tokens on a real `cos serve` (COS_AUTH_TOKENS_FILE, docs/operations.md "Security"): over gRPC
and HTTP, client and admin roles, the health service open to probes, and no token in the logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chiefofstate.cli.processes import Process, free_port
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.manager_pb2_grpc import ReadSideManagerServiceStub
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory
from tests.support.certificates import CertificateAuthority
from tests.support.readside_processes import cos_cli

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)

CLIENT_TOKEN = "client-token-5f2a9c"
ADMIN_TOKEN = "admin-token-81d7e3"
DEADLINE_S = 60.0


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens"
    path.write_text(f"# who may call\n{CLIENT_TOKEN} client\n{ADMIN_TOKEN} admin\n")
    return path


@pytest.fixture
def guarded_node(node_factory: NodeFactory, tmp_path: Path) -> Process:
    return node_factory(
        COS_SERVER_PROTOCOL="both",
        COS_AUTH_TOKENS_FILE=str(tokens_file(tmp_path)),
        COS_SUBSCRIPTION_ENABLED="true",
        COS_READ_SIDE_ENABLED="true",
        COS_READ_SIDE_CONFIG__HOST__ledger="127.0.0.1",
        COS_READ_SIDE_CONFIG__PORT__ledger=str(free_port()),
    )


@sqlite_only
async def test_grpc_calls_need_a_known_token_and_the_manager_an_admin_one(guarded_node: Process) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{guarded_node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        manager = ReadSideManagerServiceStub(channel)  # type: ignore[no-untyped-call]
        command = pb.ProcessCommandRequest(entity_id="acc-1", command=bank.open_account("Ann", 5))
        for metadata in ((), bearer("not-a-token"), (("authorization", CLIENT_TOKEN),)):
            with pytest.raises(aio.AioRpcError) as refused:
                await cos.ProcessCommand(command, timeout=10, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in (refused.value.details() or "")
        with pytest.raises(aio.AioRpcError) as stream_refused:
            async for _ in cos.SubscribeAll(pb.SubscribeAllRequest(subscription_id="s1"), timeout=10):
                pass
        assert stream_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        reply = await cos.ProcessCommand(command, timeout=10, metadata=bearer(CLIENT_TOKEN))
        assert reply.meta.revision_number == 1
        state = await cos.GetState(
            pb.GetStateRequest(entity_id="acc-1"), timeout=10, metadata=bearer(ADMIN_TOKEN)
        )
        assert state.meta.revision_number == 1

        offsets = mpb.GetLatestOffsetRequest(read_side_id="ledger")
        for metadata in ((), bearer(CLIENT_TOKEN)):
            with pytest.raises(aio.AioRpcError) as denied:
                await manager.GetLatestOffset(offsets, timeout=10, metadata=metadata)
            expected = grpc.StatusCode.PERMISSION_DENIED if metadata else grpc.StatusCode.UNAUTHENTICATED
            assert denied.value.code() == expected
        await manager.GetLatestOffset(offsets, timeout=10, metadata=bearer(ADMIN_TOKEN))

        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        probe = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
    log = guarded_node.log_text()
    assert CLIENT_TOKEN not in log and ADMIN_TOKEN not in log


@sqlite_only
async def test_http_calls_need_a_known_token(guarded_node: Process) -> None:
    url = f"http://127.0.0.1:{guarded_node.ports['http']}/v1/entities/acc-1/state"
    async with httpx.AsyncClient(timeout=10) as http:
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Basic {CLIENT_TOKEN}"}):
            refused = await http.get(url, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert refused.json()["code"] == "UNAUTHENTICATED"
        for token in (CLIENT_TOKEN, ADMIN_TOKEN):
            served = await http.get(url, headers={"authorization": f"Bearer {token}"})
            assert served.status_code == 404 and served.json()["code"] == "NOT_FOUND"  # no such entity yet
        docs = await http.get(f"http://127.0.0.1:{guarded_node.ports['http']}/openapi.json")
        assert docs.status_code == 401
    log = guarded_node.log_text()
    assert CLIENT_TOKEN not in log and ADMIN_TOKEN not in log


@sqlite_only
def test_a_bad_tokens_file_stops_the_node_with_exit_code_2(node_factory: NodeFactory, tmp_path: Path) -> None:
    bad = tmp_path / "bad-tokens"
    bad.write_text(f"{CLIENT_TOKEN} client\n{ADMIN_TOKEN} root\n")
    node = node_factory(wait=False, COS_AUTH_TOKENS_FILE=str(bad))
    assert node.popen.wait(60) == 2
    log = node.log_text()
    assert "COS_AUTH_TOKENS_FILE" in log and "line 2" in log and "client or admin" in log
    assert ADMIN_TOKEN not in log


@sqlite_only
def test_cos_readside_speaks_mutual_tls_and_sends_its_token(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    served = ca.issue("node")
    client = ca.issue("operator")
    node = node_factory(
        COS_AUTH_TOKENS_FILE=str(tokens_file(tmp_path)),
        COS_TLS_CERT_FILE=str(served.cert_file),
        COS_TLS_KEY_FILE=str(served.key_file),
        COS_TLS_CLIENT_CA_FILE=str(ca.cert_file),
        COS_READ_SIDE_ENABLED="true",
        COS_READ_SIDE_CONFIG__HOST__ledger="127.0.0.1",
        COS_READ_SIDE_CONFIG__PORT__ledger=str(free_port()),
    )
    port = ["--port", str(node.ports["grpc"])]
    tls = [
        "--ca-file",
        str(ca.cert_file),
        "--cert-file",
        str(client.cert_file),
        "--key-file",
        str(client.key_file),
    ]

    listed = cos_cli("readside", *tls, "--token", ADMIN_TOKEN, "list", *port)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "read side ledger" in listed.stdout
    from_env = cos_cli("readside", *tls, "offsets", "ledger", *port, env={"COS_CLI_TOKEN": ADMIN_TOKEN})
    assert from_env.returncode == 0 and "offsets of read side ledger" in from_env.stdout

    as_client = cos_cli("readside", *tls, "--token", CLIENT_TOKEN, "list", *port)
    assert as_client.returncode == 1 and "PERMISSION_DENIED" in as_client.stdout
    tokenless = cos_cli("readside", *tls, "list", *port)
    assert tokenless.returncode == 1 and "UNAUTHENTICATED" in tokenless.stdout
    plaintext = cos_cli("readside", "--token", ADMIN_TOKEN, "list", *port, "--timeout", "3")
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stdout
    half = cos_cli("readside", "--cert-file", str(client.cert_file), "list", *port)
    assert half.returncode == 2 and "--key-file" in half.stdout + half.stderr
    log = node.log_text()
    assert ADMIN_TOKEN not in log and CLIENT_TOKEN not in log


@sqlite_only
def test_cos_send_get_and_follow_speak_tls_and_send_their_token(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    served = ca.issue("node")
    node = node_factory(
        COS_AUTH_TOKENS_FILE=str(tokens_file(tmp_path)),
        COS_TLS_CERT_FILE=str(served.cert_file),
        COS_TLS_KEY_FILE=str(served.key_file),
        COS_SUBSCRIPTION_ENABLED="true",
    )
    # the bank handler's reflection, as the node's own settings name it
    handler = {name: node.env[name] for name in ("COS_WRITE_SIDE_HOST", "COS_WRITE_SIDE_PORT")}
    reach = ["--port", str(node.ports["grpc"]), "--ca-file", str(ca.cert_file)]

    sent = cos_cli(
        "send", "tls-1", "bank.v1.OpenAccount", '{"owner": "T"}', *reach, "--token", CLIENT_TOKEN, env=handler
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert '"owner": "T"' in sent.stdout
    got = cos_cli("get", "tls-1", "--json", *reach, env={**handler, "COS_CLI_TOKEN": CLIENT_TOKEN})
    assert got.returncode == 0 and '"owner": "T"' in got.stdout
    # a server stream: the token must go with it too
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chiefofstate",
            "events",
            "--follow",
            "tls-1",
            "--count",
            "1",
            "--json",
            *reach,
        ],
        env={**os.environ, **handler, "COS_CLI_TOKEN": CLIENT_TOKEN},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = follower.stderr.readline() if follower.stderr else ""  # "following …" once registered
        assert said.startswith("following events of tls-1"), said
        deposit = cos_cli(
            "send",
            "tls-1",
            "bank.v1.Deposit",
            '{"amount": "3"}',
            *reach,
            "--token",
            CLIENT_TOKEN,
            env=handler,
        )
        assert deposit.returncode == 0, deposit.stderr
        out, _ = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.wait()
    assert follower.returncode == 0 and '"amount":"3"' in out
    refused = cos_cli("events", "--follow", "--all", *reach, env=handler)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    tokenless = cos_cli("get", "tls-1", *reach, env=handler)
    assert tokenless.returncode == 1 and tokenless.stderr.startswith("error: UNAUTHENTICATED")
    plaintext = cos_cli(
        "get", "tls-1", "--port", str(node.ports["grpc"]), "--token", CLIENT_TOKEN, env=handler
    )
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr


async def served_with(port: int, token: str) -> bool:
    """Whether a GetState with `token` gets past the token check (an unknown entity's NOT_FOUND does)."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            await cos.GetState(pb.GetStateRequest(entity_id="acc-x"), timeout=10, metadata=bearer(token))
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return True


@sqlite_only
async def test_a_rotated_tokens_file_applies_without_a_restart_and_a_broken_one_changes_nothing(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    path = tokens_file(tmp_path)
    node = node_factory(
        COS_SERVER_PROTOCOL="both", COS_AUTH_TOKENS_FILE=str(path), COS_TLS_RELOAD_INTERVAL="200ms"
    )
    port, url = node.ports["grpc"], f"http://127.0.0.1:{node.ports['http']}/v1/entities/acc-x/state"
    rotated = "rotated-token-3c9e41"
    assert await served_with(port, CLIENT_TOKEN) and not await served_with(port, rotated)

    replacement = tmp_path / "tokens.new"
    replacement.write_text(f"{rotated} client\n{ADMIN_TOKEN} admin\n")
    replacement.replace(path)  # as secret managers rotate files: a rename over the old one
    deadline = time.monotonic() + DEADLINE_S
    while await served_with(port, CLIENT_TOKEN) or not await served_with(port, rotated):
        assert time.monotonic() < deadline, "the rotated tokens file was never taken"
        await asyncio.sleep(0.1)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url, headers={"authorization": f"Bearer {CLIENT_TOKEN}"})).status_code == 401
        assert (await http.get(url, headers={"authorization": f"Bearer {rotated}"})).status_code == 404

    # A broken file (a line without a role) is refused with one warning; the tokens in force stay.
    path.write_text(f"{CLIENT_TOKEN}\n")
    deadline = time.monotonic() + DEADLINE_S
    while "does not parse" not in node.log_text():
        assert time.monotonic() < deadline, "the broken tokens file was not reported"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # ten more checks of the unchanged broken file
    assert node.log_text().count("does not parse") == 1
    assert await served_with(port, rotated) and not await served_with(port, CLIENT_TOKEN)
    path.unlink()  # gone altogether: the same
    await asyncio.sleep(1)
    assert await served_with(port, rotated) and node.alive()
    log = node.log_text()
    assert "cannot be read" in log
    assert rotated not in log and CLIENT_TOKEN not in log and ADMIN_TOKEN not in log
