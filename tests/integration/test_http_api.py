"""The HTTP/JSON API end to end: a real `cos serve`, the real bank handler, httpx (docs/contract.md §8,
D5)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import grpc
import httpx
import pytest
from chiefofstate_examples.bank import client as bank
from google.protobuf.any_pb2 import Any as AnyProto
from grpc import aio

from chiefofstate.cli.processes import Process, free_port, start_bank_write_handler
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import NodeFactory
from tests.support.journal_reader import read_journal

pytestmark = pytest.mark.integration

# The HTTP layer does not depend on the store: one store is enough for everything but the round trip.
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)

ISO_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.(\d{3}|\d{6}|\d{9}))?Z")
JSON_HEADERS = {"Content-Type": "application/json"}


def command(value: AnyProto, **extra: object) -> dict[str, object]:
    return {"command": base64.b64encode(value.SerializeToString()).decode(), **extra}


def any_of(text: str) -> AnyProto:
    return AnyProto.FromString(base64.b64decode(text))


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "code"}
    return response.status_code, body["code"], body["error"]


@pytest.fixture
def http_node(node_factory: NodeFactory) -> Process:
    return node_factory(COS_SERVER_PROTOCOL="both", COS_WRITE_PERSISTED_HEADERS="x-user,x-sig-bin")


@pytest.fixture
async def http(http_node: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{http_node.ports['http']}", timeout=10
    ) as client:
        yield client


@pytest.fixture
async def grpc_cos(http_node: Process) -> AsyncIterator[ChiefOfStateServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{http_node.ports['grpc']}") as channel:
        yield ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]


async def test_http_and_grpc_share_one_command_path_and_one_encoding_of_states(
    http: httpx.AsyncClient, grpc_cos: ChiefOfStateServiceStub
) -> None:
    opened = await http.post("/v1/commands/acc-1/process", json=command(bank.open_account("Ann", 1000)))
    assert opened.status_code == 200 and opened.headers["content-type"] == "application/json"
    body = opened.json()
    assert set(body) == {"state", "meta"} and set(body["meta"]) == {
        "entity_id",
        "revision_number",
        "revision_date",
    }
    assert body["meta"]["entity_id"] == "acc-1" and body["meta"]["revision_number"] == 1
    assert ISO_INSTANT.fullmatch(body["meta"]["revision_date"])
    assert bank.account_from_any(any_of(body["state"])).balance == 1000

    # the same entity over gRPC: one host, one state
    over_grpc = await grpc_cos.GetState(pb.GetStateRequest(entity_id="acc-1"), timeout=10)
    assert over_grpc.state == any_of(body["state"]) and over_grpc.meta.revision_number == 1
    await grpc_cos.ProcessCommand(
        pb.ProcessCommandRequest(entity_id="acc-1", command=bank.deposit(5)), timeout=10
    )
    transfer = await http.post("/v1/commands/acc-1/process", json=command(bank.transfer_out(100, 5, "acc-2")))
    assert transfer.json()["meta"]["revision_number"] == 4  # two events, folded in order (D1)
    state = await http.get("/v1/entities/acc-1/state")
    assert state.status_code == 200 and state.json() == transfer.json()
    assert bank.account_from_any(any_of(state.json()["state"])).balance == 900


@sqlite_only
async def test_failures_get_the_status_codes_of_decision_d5_with_json_bodies(http: httpx.AsyncClient) -> None:
    assert error_of(await http.get("/v1/entities/nobody/state")) == (404, "NOT_FOUND", "NOT_FOUND")
    await http.post("/v1/commands/acc-2/process", json=command(bank.open_account("Ben", 10)))
    twice = await http.post("/v1/commands/acc-2/process", json=command(bank.open_account("Ben", 10)))
    assert error_of(twice) == (409, "ALREADY_EXISTS", "account acc-2 already exists")
    too_much = error_of(await http.post("/v1/commands/acc-2/process", json=command(bank.withdraw(500))))
    assert too_much == (412, "FAILED_PRECONDITION", "insufficient funds: balance 10, requested 500")
    teleport = AnyProto(type_url="type.googleapis.com/bank.v1.Teleport")
    status, code, message = error_of(await http.post("/v1/commands/acc-2/process", json=command(teleport)))
    assert (status, code) == (400, "INVALID_ARGUMENT") and "bank.v1.Teleport" in message
    # an absent or null command reaches the handler as an empty Any (§8.2), which the bank refuses
    for body in ({}, {"command": None}):
        missing = error_of(await http.post("/v1/commands/acc-2/process", json=body))
        assert missing[:2] == (400, "INVALID_ARGUMENT") and "missing command" in missing[2]
    too_long = error_of(await http.post(f"/v1/commands/{'x' * 256}/process", json=command(bank.deposit(1))))
    assert too_long[:2] == (400, "INVALID_ARGUMENT") and "255" in too_long[2]
    empty = error_of(await http.post("/v1/commands//process", json=command(bank.deposit(1))))
    assert empty == (400, "INVALID_ARGUMENT", "empty entity ID")
    assert (await http.get("/v1/entities/acc-2/state")).json()["meta"]["revision_number"] == 1


PROCESS = "/v1/commands/b-1/process"
BAD = (400, "INVALID_ARGUMENT")
WRONG_MEDIA = (415, "INVALID_ARGUMENT")
WRONG_METHOD = (405, "UNIMPLEMENTED")
NO_ROUTE = (404, "NOT_FOUND")


@sqlite_only
@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "expected"),
    [
        ("POST", PROCESS, b"{not json", JSON_HEADERS, BAD),
        ("POST", PROCESS, b"\xff\xfe", JSON_HEADERS, BAD),
        ("POST", PROCESS, b"[1, 2]", JSON_HEADERS, BAD),
        ("POST", PROCESS, b'"text"', JSON_HEADERS, BAD),
        ("POST", PROCESS, b'{"command": "%%%"}', JSON_HEADERS, BAD),
        ("POST", PROCESS, b'{"command": "/////w=="}', JSON_HEADERS, BAD),
        ("POST", PROCESS, b'{"command": 12}', JSON_HEADERS, BAD),
        ("POST", PROCESS, b'{"entity_id": 7}', JSON_HEADERS, BAD),
        ("POST", PROCESS, b"{}", {"Content-Type": "text/plain"}, WRONG_MEDIA),
        ("POST", PROCESS, b"{}", {}, WRONG_MEDIA),
        ("POST", PROCESS, b"{}", {**JSON_HEADERS, "x-sig-bin": "%%"}, BAD),
        ("PUT", PROCESS, b"{}", JSON_HEADERS, WRONG_METHOD),
        ("GET", PROCESS, None, {}, WRONG_METHOD),
        ("POST", "/v1/entities/b-1/state", b"{}", JSON_HEADERS, WRONG_METHOD),
        ("GET", "/v1/nothing/here", None, {}, NO_ROUTE),
        ("GET", "/", None, {}, NO_ROUTE),
    ],
    ids=[
        "invalid-json", "not-utf8", "body-is-an-array", "body-is-a-string", "command-not-base64",
        "command-not-an-any", "command-not-a-string", "entity-id-not-a-string", "wrong-content-type",
        "no-content-type", "bin-header-not-base64", "put-on-process", "get-on-process", "post-on-state",
        "unknown-route", "root",
    ],
)  # fmt: skip
async def test_bad_requests_are_refused_with_json_bodies_and_write_nothing(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    expected: tuple[int, str],
) -> None:
    response = await http.request(method, path, content=content, headers=headers)
    status, code, message = error_of(response)
    assert (status, code) == expected and message
    if status == 405:
        assert response.headers["allow"]
    assert (await http.get("/v1/entities/b-1/state")).status_code == 404


@sqlite_only
async def test_the_path_entity_id_wins_over_the_body(http: httpx.AsyncClient, http_node: Process) -> None:
    reply = await http.post(
        "/v1/commands/path-id/process", json=command(bank.open_account("P", 1), entity_id="body-id")
    )
    assert reply.status_code == 200 and reply.json()["meta"]["entity_id"] == "path-id"
    assert (await http.get("/v1/entities/body-id/state")).status_code == 404
    assert "the path wins" in http_node.log_text()


@sqlite_only
async def test_http_headers_are_persisted_lower_cased_with_bin_values_given_in_base64(
    http: httpx.AsyncClient,
) -> None:
    headers = {"X-User": "ann", "x-sig-bin": base64.b64encode(b"\x01\x02").decode(), "x-other": "dropped"}
    reply = await http.post(
        "/v1/commands/h-1/process", json=command(bank.open_account("H", 1)), headers=headers
    )
    assert reply.json()["meta"]["headers"] == [
        {"key": "x-user", "string_value": "ann"},
        {"key": "x-sig-bin", "bytes_value": "AQI="},
    ]


@sqlite_only
async def test_entity_ids_may_hold_slashes_spaces_and_non_ascii_text(
    http: httpx.AsyncClient, grpc_cos: ChiefOfStateServiceStub
) -> None:
    reply = await http.post("/v1/commands/a%2Fb%20%C3%A9/process", json=command(bank.open_account("S", 1)))
    assert reply.status_code == 200 and reply.json()["meta"]["entity_id"] == "a/b é"
    state = await grpc_cos.GetState(pb.GetStateRequest(entity_id="a/b é"), timeout=10)
    assert state.meta.revision_number == 1
    assert (await http.get("/v1/entities/a/b é/state")).json()["meta"]["entity_id"] == "a/b é"


@sqlite_only
async def test_error_messages_with_quotes_backslashes_and_control_characters_stay_valid_json(
    http: httpx.AsyncClient,
) -> None:
    nasty = 'q"uo\\te'
    response = await http.post(f"/v1/commands/{quote(nasty, safe='')}/process", json=command(bank.deposit(1)))
    assert error_of(response) == (404, "NOT_FOUND", f"account {nasty} does not exist")
    json.loads(response.content)  # the raw bytes parse, unlike upstream's hand-escaped JSON


async def test_ids_with_control_characters_are_refused_alike_over_http_and_grpc_and_write_nothing(
    http: httpx.AsyncClient, grpc_cos: ChiefOfStateServiceStub, http_node: Process, store_env: dict[str, str]
) -> None:
    for entity_id in ["nul\x00id", "line\nbreak", "tab\tid", "\x7f"]:
        encoded = quote(entity_id, safe="")
        for response in (
            await http.post(f"/v1/commands/{encoded}/process", json=command(bank.open_account("C", 1))),
            await http.get(f"/v1/entities/{encoded}/state"),
        ):
            status, code, message = error_of(response)
            assert (status, code) == (400, "INVALID_ARGUMENT") and "control character" in message
        with pytest.raises(aio.AioRpcError) as refused:
            await grpc_cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=entity_id, command=bank.open_account("C", 1)), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "control character" in str(refused.value.details())
    # The store was never asked: a valid command right after works, and nothing else was written.
    ok = await http.post("/v1/commands/after/process", json=command(bank.open_account("A", 1)))
    assert ok.status_code == 200
    assert list(read_journal(store_env)) == ["after"]


@sqlite_only
async def test_malformed_requests_get_invalid_argument_logged_once_at_warn_without_a_trace(
    http: httpx.AsyncClient, http_node: Process
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    long_number = b'{"command": ' + b"9" * 5001 + b"}"
    for body in (deep, long_number):
        response = await http.post("/v1/commands/m-1/process", content=body, headers=JSON_HEADERS)
        status, code, message = error_of(response)
        assert (status, code) == (400, "INVALID_ARGUMENT") and "not valid JSON" in message
    async with aio.insecure_channel(f"127.0.0.1:{http_node.ports['grpc']}") as channel:
        for method in ("ProcessCommand", "GetState", "Subscribe"):
            call = channel.unary_unary(f"/chief_of_state.v1.ChiefOfStateService/{method}")
            with pytest.raises(aio.AioRpcError) as refused:
                await call(b"\xff\xff\xff\xff", timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in str(refused.value.details())
    assert (await http.get("/v1/entities/m-1/state")).status_code == 404
    log = http_node.log_text()
    assert log.count("request refused: method=/chief_of_state.v1.ChiefOfStateService/") == 3
    assert "Traceback" not in log


@sqlite_only
async def test_oversized_headers_and_type_urls_are_refused_early_and_logged_briefly(
    http: httpx.AsyncClient, grpc_cos: ChiefOfStateServiceStub, http_node: Process
) -> None:
    big_header = await http.post(
        "/v1/commands/big-1/process", json=command(bank.open_account("B", 1)), headers={"x-user": "u" * 9000}
    )
    status, code, message = error_of(big_header)
    assert (status, code) == (431, "INVALID_ARGUMENT") and "x-user" in message and "8192" in message
    with pytest.raises(aio.AioRpcError) as big_metadata:
        await grpc_cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="big-1", command=bank.open_account("B", 1)),
            metadata=(("x-user", "u" * 20_000),),
            timeout=10,
        )
    assert big_metadata.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    long_url = AnyProto(type_url="type.googleapis.com/" + "z" * 1_000_000)
    over_http = await http.post("/v1/commands/big-2/process", json=command(long_url))
    assert error_of(over_http)[:2] == (400, "INVALID_ARGUMENT")
    with pytest.raises(aio.AioRpcError) as refused:
        await grpc_cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id="big-3", command=long_url), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "type URL" in str(
        refused.value.details()
    )
    for entity_id in ("big-1", "big-2", "big-3"):
        assert (await http.get(f"/v1/entities/{entity_id}/state")).status_code == 404
    assert len(http_node.log_text()) < 100_000  # the megabyte type URLs were not logged


@sqlite_only
async def test_openapi_lists_the_statuses_the_server_answers_and_docs_need_no_cdn(
    http: httpx.AsyncClient,
) -> None:
    spec = (await http.get("/openapi.json")).json()
    process = spec["paths"]["/v1/commands/{entityId}/process"]["post"]
    state = spec["paths"]["/v1/entities/{entityId}/state"]["get"]
    # 400 for a bad body, never FastAPI's 422 HTTPValidationError
    assert "422" not in process["responses"] and "422" not in state["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert {"200", "400", "404", "409", "412", "413", "415", "429", "500", "503", "504"} <= set(
        process["responses"]
    )
    assert {"200", "400", "404", "500", "503", "504"} <= set(state["responses"])
    assert {"413", "415", "409", "412"}.isdisjoint(state["responses"])  # GetState has no body to refuse
    not_found = process["responses"]["404"]["content"]["application/json"]
    assert not_found["schema"] == {"$ref": "#/components/schemas/ErrorReply"}
    assert set(spec["components"]["schemas"]["ErrorReply"]["required"]) == {"error", "code"}

    # The documented example command is a real one: sent as is, the bank opens the account.
    example = process["requestBody"]["content"]["application/json"]["example"]
    opened = await http.post("/v1/commands/openapi-example/process", json=example)
    assert opened.status_code == 200, opened.text
    # And a refusal really has the documented shape.
    refused = await http.post("/v1/commands/openapi-example/process", json={"command": "%%%"})
    assert error_of(refused)[:2] == (400, "INVALID_ARGUMENT")

    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    script = await http.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


@sqlite_only
async def test_an_http_only_node_serves_no_grpc(node_factory: NodeFactory) -> None:
    node = node_factory(COS_SERVER_PROTOCOL="http")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports['http']}", timeout=10) as http:
        reply = await http.post("/v1/commands/o-1/process", json=command(bank.open_account("O", 1)))
        assert reply.status_code == 200
    async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(aio.AioRpcError) as refused:
            await cos.GetState(pb.GetStateRequest(entity_id="o-1"), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "serving HTTP on" in node.log_text() and "gRPC on" not in node.log_text()


@sqlite_only
async def test_an_unreachable_or_slow_handler_gives_503_and_504(
    node_factory: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gone = node_factory(COS_SERVER_PROTOCOL="http", COS_WRITE_SIDE_PORT=str(free_port()))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gone.ports['http']}", timeout=10) as http:
        reply = await http.post("/v1/commands/u-1/process", json=command(bank.open_account("U", 1)))
        assert error_of(reply)[:2] == (503, "UNAVAILABLE")
    gone.stop()  # one node per SQLite file: the next node of this test uses the same store
    slow = start_bank_write_handler(
        tmp_path_factory.mktemp("slow-http"), extra_env={"BANK_HANDLER_DELAY_MS": "1500"}
    )
    try:
        node = node_factory(
            COS_SERVER_PROTOCOL="http",
            COS_WRITE_SIDE_PORT=str(slow.ports["grpc"]),
            COS_COMMAND_HANDLER_TIMEOUT="1",
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports['http']}", timeout=10) as http:
            reply = await http.post("/v1/commands/d-1/process", json=command(bank.open_account("D", 1)))
            assert error_of(reply)[:2] == (504, "DEADLINE_EXCEEDED")
            assert (await http.get("/v1/entities/d-1/state")).status_code == 404
    finally:
        slow.stop()
