"""Calls to peers over mutual TLS, against a real gRPC server in this process: the node presents its own
certificate, and presents the new one once it is reloaded."""

from __future__ import annotations

from pathlib import Path

from grpc import aio

from chiefofstate.api.tls import ServerTls
from chiefofstate.cluster.peers import GET_STATE, PeerClients
from chiefofstate.config.security import TlsSettings
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import (
    ChiefOfStateServiceServicer,
    add_ChiefOfStateServiceServicer_to_server,
)
from tests.support.certificates import CertificateAuthority, serial_of


class Owner(ChiefOfStateServiceServicer):
    def __init__(self) -> None:
        self.client_serials: list[int] = []

    async def GetState(
        self, request: pb.GetStateRequest, context: aio.ServicerContext
    ) -> pb.GetStateResponse:  # type: ignore[override]
        (pem,) = context.auth_context()["x509_pem_cert"]
        self.client_serials.append(serial_of(pem))
        return pb.GetStateResponse(meta=MetaData(entity_id=request.entity_id, revision_number=3))


async def test_peers_present_the_nodes_certificate_and_its_replacement(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    first = ca.issue("member")
    tls = ServerTls(TlsSettings(first.cert_file, first.key_file, ca.cert_file))
    owner = Owner()
    server = aio.server()
    add_ChiefOfStateServiceServicer_to_server(owner, server)
    port = server.add_secure_port("127.0.0.1:0", tls.grpc_server_credentials())
    await server.start()
    peers = PeerClients(tls=tls)
    try:
        request = pb.GetStateRequest(entity_id="e").SerializeToString()
        reply = await peers.call(f"127.0.0.1:{port}", GET_STATE, request, [], 10)
        assert pb.GetStateResponse.FromString(reply).meta.revision_number == 3
        second = ca.issue("member", cert_file=first.cert_file, key_file=first.key_file)
        assert tls.reload_if_changed()
        await peers.call(f"127.0.0.1:{port}", GET_STATE, request, [], 10)
        assert owner.client_serials == [first.serial, second.serial]
    finally:
        await peers.close()
        await server.stop(None)
