"""What a node exposes where (docs/operations.md, "Security"): the operator ports on their own bind
addresses, and gRPC server reflection that can be turned off."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_answers(node: Process, url: str) -> None:
    deadline = time.monotonic() + 60
    while not answers(url):
        assert node.alive(), node.log_text()
        assert time.monotonic() < deadline, f"{url} never answered:\n{node.log_text()}"
        time.sleep(0.1)


@sqlite_only
async def test_management_and_metrics_listen_only_on_their_own_addresses(node_factory: NodeFactory) -> None:
    # Three addresses of the loopback network, so that "not on the other" is observable on one machine.
    node = node_factory(wait=False, COS_MANAGEMENT_ADDRESS="127.0.0.2", COS_PROMETHEUS_ADDRESS="127.0.0.3")
    management, metrics = node.ports["management"], node.ports["metrics"]
    wait_until_answers(node, f"http://127.0.0.2:{management}/ready")
    wait_until_answers(node, f"http://127.0.0.3:{metrics}/metrics")
    assert not answers(f"http://127.0.0.1:{management}/ready")
    assert not answers(f"http://127.0.0.1:{metrics}/metrics")
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:  # COS_ADDRESS, as set
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(aio.AioRpcError) as caught:
            await cos.GetState(pb.GetStateRequest(entity_id="nobody"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def listed_services(port: int) -> set[str]:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in call:
            return {service.name for service in response.list_services_response.service}
    return set()


@sqlite_only
async def test_server_reflection_is_on_by_default_and_can_be_turned_off(node_factory: NodeFactory) -> None:
    default = node_factory()
    assert "grpc.reflection.v1alpha.ServerReflection" in await listed_services(default.ports["grpc"])
    assert "chief_of_state.v1.ChiefOfStateService" in await listed_services(default.ports["grpc"])
    default.stop()  # one node per SQLite file
    without = node_factory(COS_GRPC_REFLECTION_ENABLED="false")
    async with aio.insecure_channel(f"127.0.0.1:{without.ports['grpc']}") as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
        # No request sent: a stream the server ends while the client is still sending is reported by
        # grpc.aio's client as its own INTERNAL ("Failed execute_batch") instead of the server's status.
        call = reflection.ServerReflectionInfo(iter([]))
        with pytest.raises(aio.AioRpcError) as caught:
            async for _ in call:
                pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
