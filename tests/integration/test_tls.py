"""TLS on the client-facing ports of a real `cos serve` (docs/operations.md, "Security"): real handshakes
with certificates made for the test, client certificates with COS_TLS_CLIENT_CA_FILE, and a certificate
replaced on disk served to new connections without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
from chiefofstate_examples.bank import client as bank
from grpc import aio

from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory
from tests.support.certificates import CertificateAuthority, Issued, serial_of

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)
DEADLINE_S = 60.0


def tls_env(server: Issued, client_ca: CertificateAuthority | None = None) -> dict[str, str]:
    env = {
        "COS_SERVER_PROTOCOL": "both",
        "COS_TLS_CERT_FILE": str(server.cert_file),
        "COS_TLS_KEY_FILE": str(server.key_file),
        "COS_TLS_RELOAD_INTERVAL": "200ms",
    }
    if client_ca is not None:
        env["COS_TLS_CLIENT_CA_FILE"] = str(client_ca.cert_file)
    return env


def grpc_credentials(ca: CertificateAuthority, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )


def https_context(ca: CertificateAuthority, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.cert_file)
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


async def grpc_get_state(
    port: int, credentials: grpc.ChannelCredentials | None, entity: str
) -> pb.GetStateResponse:
    target = f"127.0.0.1:{port}"
    channel = aio.secure_channel(target, credentials) if credentials else aio.insecure_channel(target)
    async with channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        response: pb.GetStateResponse = await stub.GetState(pb.GetStateRequest(entity_id=entity), timeout=10)
        return response


async def grpc_open_account(port: int, credentials: grpc.ChannelCredentials, entity: str) -> None:
    async with aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=entity, command=bank.open_account("Ann", 5)), timeout=10
        )


def served_serial(port: int, ca: CertificateAuthority, alpn: str, client: Issued | None = None) -> int:
    """The serial number of the certificate the port presents in a fresh handshake."""
    context = https_context(ca, client)
    context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@sqlite_only
async def test_tls_ports_serve_tls_clients_and_refuse_plaintext(
    node_factory: NodeFactory, ca: CertificateAuthority
) -> None:
    node = node_factory(**tls_env(ca.issue("node")))
    grpc_port, http_port = node.ports["grpc"], node.ports["http"]
    await grpc_open_account(grpc_port, grpc_credentials(ca), "acc-1")
    assert (await grpc_get_state(grpc_port, grpc_credentials(ca), "acc-1")).meta.revision_number == 1
    async with httpx.AsyncClient(verify=https_context(ca), timeout=10) as https:
        state = await https.get(f"https://127.0.0.1:{http_port}/v1/entities/acc-1/state")
        assert state.status_code == 200 and state.json()["meta"]["revision_number"] == 1

    with pytest.raises(aio.AioRpcError) as plaintext:
        await grpc_get_state(grpc_port, None, "acc-1")
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    async with httpx.AsyncClient(timeout=10) as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://127.0.0.1:{http_port}/v1/entities/acc-1/state")
    # A client that does not trust the node's CA refuses it.
    other_ca = CertificateAuthority(ca.directory / "other", name="another CA")
    with pytest.raises(aio.AioRpcError):
        await grpc_get_state(grpc_port, grpc_credentials(other_ca), "acc-1")


@sqlite_only
async def test_with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served(
    node_factory: NodeFactory, ca: CertificateAuthority
) -> None:
    client_ca = CertificateAuthority(ca.directory / "clients", name="client CA")
    node = node_factory(**tls_env(ca.issue("node"), client_ca))
    assert "gRPC (mutual TLS) on" in node.log_text() and "HTTP (mutual TLS) on" in node.log_text()
    grpc_port, http_port = node.ports["grpc"], node.ports["http"]
    client = client_ca.issue("client")
    await grpc_open_account(grpc_port, grpc_credentials(ca, client), "acc-1")
    async with httpx.AsyncClient(verify=https_context(ca, client), timeout=10) as https:
        assert (await https.get(f"https://127.0.0.1:{http_port}/v1/entities/acc-1/state")).status_code == 200

    with pytest.raises(aio.AioRpcError) as without_certificate:
        await grpc_get_state(grpc_port, grpc_credentials(ca), "acc-1")
    assert without_certificate.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = ca.issue("stranger")  # signed by a CA the node does not take client certificates from
    with pytest.raises(aio.AioRpcError):
        await grpc_get_state(grpc_port, grpc_credentials(ca, stranger), "acc-1")
    for refused in (https_context(ca), https_context(ca, stranger)):
        async with httpx.AsyncClient(verify=refused, timeout=10) as https:
            with pytest.raises(httpx.HTTPError):
                await https.get(f"https://127.0.0.1:{http_port}/v1/entities/acc-1/state")


@sqlite_only
async def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(
    node_factory: NodeFactory, ca: CertificateAuthority
) -> None:
    first = ca.issue("node")
    node: Process = node_factory(**tls_env(first))
    grpc_port, http_port = node.ports["grpc"], node.ports["http"]
    assert served_serial(grpc_port, ca, "h2") == first.serial
    assert served_serial(http_port, ca, "http/1.1") == first.serial
    async with aio.secure_channel(f"127.0.0.1:{grpc_port}", grpc_credentials(ca)) as kept:
        stub = ChiefOfStateServiceStub(kept)  # type: ignore[no-untyped-call]
        await stub.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="acc-1", command=bank.open_account("Ann", 5)), timeout=10
        )

        second = ca.issue("node", cert_file=first.cert_file, key_file=first.key_file)
        deadline = time.monotonic() + DEADLINE_S
        while (served_serial(grpc_port, ca, "h2"), served_serial(http_port, ca, "http/1.1")) != (
            second.serial,
            second.serial,
        ):
            assert time.monotonic() < deadline, "the new certificate was never served"
            await asyncio.sleep(0.2)
        # The connection made before the change keeps working; new ones see the new certificate.
        assert (await stub.GetState(pb.GetStateRequest(entity_id="acc-1"), timeout=10)).meta.revision_number
    assert (await grpc_get_state(grpc_port, grpc_credentials(ca), "acc-1")).meta.revision_number == 1
    assert node.alive() and "certificate reloaded" in node.log_text()


def forwarded(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cos_cluster_forwarded_duration_seconds_count")
    )


@pytest.mark.parametrize("store_env", ["postgres"], indirect=True)
async def test_cluster_members_forward_to_each_other_over_mutual_tls_with_the_callers_token(
    node_factory: NodeFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Both members present certificates signed by the client CA to each other's cluster port, and a
    forwarded call carries its caller's token, which the owner checks again; a plaintext or
    certificate-less caller is refused there, and so is a call without a token."""
    tokens = tmp_path / "tokens"
    tokens.write_text("the-token client\n")
    env = {
        **tls_env(ca.issue("member"), ca),
        "COS_SERVER_PROTOCOL": "grpc",
        "COS_AUTH_TOKENS_FILE": str(tokens),
    }
    token = (("authorization", "Bearer the-token"),)
    first = node_factory(**env)
    second = node_factory(**env)
    client = ca.issue("client")
    credentials = grpc_credentials(ca, client)
    deadline = time.monotonic() + DEADLINE_S
    async with aio.secure_channel(f"127.0.0.1:{first.ports['grpc']}", credentials) as channel:
        stub = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        number = 0
        while forwarded(first.ports["metrics"]) == 0:
            assert time.monotonic() < deadline, f"nothing forwarded:\n{second.log_text()}"
            request = pb.ProcessCommandRequest(entity_id=f"acc-{number}", command=bank.open_account("A", 1))
            try:
                await stub.ProcessCommand(request, timeout=20, metadata=token)
                number += 1
            except aio.AioRpcError as error:  # a shard changing hands as the second member joins
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                await asyncio.sleep(0.2)
        # Every account, whichever member owns it, answers through the first member.
        for opened in range(number):
            reply = await stub.GetState(
                pb.GetStateRequest(entity_id=f"acc-{opened}"), timeout=20, metadata=token
            )
            assert reply.meta.revision_number == 1

    cluster_port = second.ports["cluster"]
    for refused in (None, grpc_credentials(ca)):
        with pytest.raises(aio.AioRpcError) as caught:
            await grpc_get_state(cluster_port, refused, "acc-0")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(aio.AioRpcError) as tokenless:
        await grpc_get_state(cluster_port, credentials, "acc-0")
    assert tokenless.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def accepted(port: int, ca: CertificateAuthority, client: Issued) -> bool:
    """Whether the gRPC port takes `client`'s certificate (a refused one fails the handshake)."""
    try:
        await grpc_get_state(port, grpc_credentials(ca, client), "acc-x")
    except aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return True
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return False
    return True


def https_accepted(port: int, ca: CertificateAuthority, client: Issued) -> bool:
    try:
        served_serial(port, ca, "http/1.1", client)
        with httpx.Client(verify=https_context(ca, client), timeout=10) as https:
            return https.get(f"https://127.0.0.1:{port}/v1/entities/acc-x/state").status_code == 404
    except (ssl.SSLError, OSError, httpx.HTTPError):
        return False


@sqlite_only
async def test_a_replaced_client_ca_applies_to_new_connections_and_a_broken_one_is_ignored(
    node_factory: NodeFactory, ca: CertificateAuthority
) -> None:
    old_ca = CertificateAuthority(ca.directory / "old-clients", name="old client CA")
    new_ca = CertificateAuthority(ca.directory / "new-clients", name="new client CA")
    node = node_factory(**tls_env(ca.issue("node"), old_ca))
    grpc_port, http_port = node.ports["grpc"], node.ports["http"]
    old_client, new_client = old_ca.issue("old-client"), new_ca.issue("new-client")
    assert await accepted(grpc_port, ca, old_client) and not await accepted(grpc_port, ca, new_client)

    staged = old_ca.cert_file.with_suffix(".staged")
    staged.write_bytes(new_ca.cert_pem)
    staged.replace(old_ca.cert_file)  # the file COS_TLS_CLIENT_CA_FILE names now holds the new CA
    deadline = time.monotonic() + DEADLINE_S
    while await accepted(grpc_port, ca, old_client) or not await accepted(grpc_port, ca, new_client):
        assert time.monotonic() < deadline, "the new client CA was never used"
        await asyncio.sleep(0.2)
    assert https_accepted(http_port, ca, new_client) and not https_accepted(http_port, ca, old_client)

    old_ca.cert_file.write_text("not a certificate\n")
    deadline = time.monotonic() + DEADLINE_S
    while "do not load" not in node.log_text():
        assert time.monotonic() < deadline, "the broken client CA file was not reported"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # ten more checks of the unchanged broken file
    assert node.log_text().count("do not load") == 1
    assert await accepted(grpc_port, ca, new_client) and not await accepted(grpc_port, ca, old_client)
    assert https_accepted(http_port, ca, new_client) and node.alive()


async def seconds_until_closed(port: int) -> float:
    """A TCP connection that never sends its TLS ClientHello: how long until the node closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE_S + 60):
            while True:
                try:
                    if not await reader.read(65536):
                        break
                except ConnectionError:
                    break
        return time.monotonic() - began
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@sqlite_only
async def test_connections_that_never_start_their_handshake_are_dropped_within_the_bound(
    node_factory: NodeFactory, ca: CertificateAuthority
) -> None:
    node = node_factory(
        **tls_env(ca.issue("node")),
        COS_HTTP_TLS_HANDSHAKE_TIMEOUT="1s",
        COS_HTTP_KEEP_ALIVE_TIMEOUT="30s",  # so that only the handshake's bound can close them
        COS_GRPC_SERVER_HANDSHAKE_TIMEOUT="1s",
    )
    grpc_port, http_port = node.ports["grpc"], node.ports["http"]
    closed = await asyncio.gather(*(seconds_until_closed(port) for port in [http_port, grpc_port] * 20))
    slack_s = 20.0  # what a busy two-core machine may add before the close is seen here
    assert min(closed) >= 0.5 and max(closed) < 1 + slack_s, closed
    # The node serves TLS clients as before.
    await grpc_open_account(grpc_port, grpc_credentials(ca), "acc-1")
    async with httpx.AsyncClient(verify=https_context(ca), timeout=10) as https:
        state = await https.get(f"https://127.0.0.1:{http_port}/v1/entities/acc-1/state")
        assert state.status_code == 200
    assert node.alive()
