"""Fuzz cases for every external input of a node, and what each answer must be (docs/contract.md §3.10,
§8.3): a documented status, never a crash, and nothing written for a refused command.

Each `check_*` function sends one generated case to a running node and raises AssertionError when the
answer breaks the contract. Hypothesis generates the cases (tests/fuzz/test_fuzz.py, `python -m
tests.fuzz`), shrinking any failure to a small reproducible case.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
from chiefofstate_examples.bank import client as bank
from google.protobuf.any_pb2 import Any as AnyProto
from hypothesis import strategies as st

from chiefofstate.cli.processes import http_ok, node_environment, start_node
from chiefofstate.config.read_sides import parse_env_definitions, parse_yaml_documents
from chiefofstate.core.errors import ConfigError
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from tests.fuzz.target import FuzzTarget
from tests.fuzz.target import node_environment as fuzz_node_environment

SERVICE = "/chief_of_state.v1.ChiefOfStateService/"

# What a client may receive (docs/contract.md §3.10): the bank handler's own refusals are
# INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION; UNIMPLEMENTED answers an unknown method. INTERNAL
# (an unexpected failure), UNKNOWN (an unhandled exception) and the rest are findings.
DOCUMENTED_GRPC = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
}
DOCUMENTED_HTTP = {200, 400, 404, 405, 409, 412, 413, 415, 429, 431, 503, 504}

_PRINTABLE_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_UTF8_TEXT = st.characters(codec="utf-8")


@dataclass
class Ledger:
    """What the node acknowledged: the highest revision answered per entity. At the end the journal
    must hold exactly these entities at exactly these revisions: a refused command wrote nothing."""

    revisions: dict[str, int] = field(default_factory=dict)
    cases: int = 0

    def acknowledged(self, entity_id: str, revision: int) -> None:
        self.revisions[entity_id] = max(revision, self.revisions.get(entity_id, 0))

    def check_journal(self, target: FuzzTarget) -> None:
        stored = target.stored_revisions()
        unexpected = {entity: revision for entity, revision in stored.items() if entity not in self.revisions}
        assert not unexpected, f"rows written for refused commands: {list(unexpected)[:5]}"
        for entity, revision in self.revisions.items():
            assert stored.get(entity) == revision, (
                f"{entity!r}: acknowledged {revision}, stored {stored.get(entity)}"
            )


# ---- strategies -------------------------------------------------------------------------------------

_plain_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
entity_ids = st.one_of(
    _plain_ids,
    _plain_ids,
    st.text(_UTF8_TEXT, min_size=0, max_size=20),
    st.text(_UTF8_TEXT, min_size=250, max_size=260),
    st.sampled_from(["acc", "a/b", "x\x00y", "line\nbreak", " ", "é", "🙂" * 3]),
    st.text(st.sampled_from("ab\x00\n\t\x7f\u0085/ %"), min_size=1, max_size=6),
)
type_urls = st.one_of(
    st.just(""),
    st.sampled_from(["type.googleapis.com/bank.v1.Deposit", "type.googleapis.com/bank.v1.OpenAccount"]),
    st.text(_UTF8_TEXT, max_size=60),
    st.builds(lambda n: "type.googleapis.com/" + "t" * n, st.integers(2000, 5000)),
)
random_anys = st.builds(
    lambda url, value: AnyProto(type_url=url, value=value), type_urls, st.binary(max_size=64)
)
bank_commands = st.one_of(
    st.builds(
        lambda owner, amount: bank.open_account(owner, amount),
        st.text(_UTF8_TEXT, max_size=10),
        st.integers(0, 10**6),
    ),
    st.builds(lambda amount: bank.deposit(amount), st.integers(-5, 10**6)),
    st.builds(lambda amount: bank.withdraw(amount), st.integers(-5, 10**6)),
)
commands = st.one_of(bank_commands, bank_commands, random_anys, st.just(AnyProto()))
header_values = st.one_of(
    st.text(_PRINTABLE_ASCII, max_size=30), st.text(_PRINTABLE_ASCII, min_size=8000, max_size=20000)
)
grpc_metadata = st.lists(
    st.one_of(
        st.tuples(st.just("x-user"), header_values),
        st.tuples(st.just("x-sig-bin"), st.binary(max_size=40)),
        st.tuples(st.sampled_from(["x-other", "authorization"]), st.text(_PRINTABLE_ASCII, max_size=40)),
    ),
    max_size=4,
)


@st.composite
def grpc_cases(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["process", "process", "process", "get", "raw", "subscribe"]))
    if kind == "process":
        return kind, (draw(entity_ids), draw(commands), draw(grpc_metadata))
    if kind == "get":
        return kind, draw(entity_ids)
    if kind == "raw":
        method = draw(st.sampled_from(["ProcessCommand", "GetState", "Unsubscribe", "UnsubscribeAll"]))
        return kind, (method, draw(st.binary(max_size=200)))
    return kind, (draw(entity_ids), draw(st.text(_UTF8_TEXT, max_size=20)), draw(st.booleans()))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def http_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["command", "command", "json", "bytes", "deep", "digits"]))
    if kind == "command":
        command = draw(commands)
        encoded = base64.b64encode(command.SerializeToString()).decode()
        body: dict[str, object] = {
            "command": draw(st.sampled_from([encoded, encoded.rstrip("="), "!!", None]))
        }
        if draw(st.booleans()):
            body["entity_id"] = draw(st.text(max_size=10))
        return json.dumps(body).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(1000, 60_000))
        return b'{"command": ' + b"[" * depth + b"]" * depth + b"}"
    return b'{"command": ' + b"7" * draw(st.integers(4000, 6000)) + b"}"


@st.composite
def http_cases(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    entity = quote(draw(entity_ids), safe="")
    path = draw(
        st.sampled_from(
            [
                f"/v1/commands/{entity}/process",
                f"/v1/commands/{entity}/process",
                f"/v1/entities/{entity}/state",
                f"/v1/{entity}",
                "/" + quote(draw(st.text(_UTF8_TEXT, max_size=20)), safe="/"),
            ]
        )
    )
    method = draw(st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE"]))
    headers = {
        "content-type": draw(
            st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])
        )
    }
    if draw(st.booleans()):
        headers["x-user"] = draw(header_values)
    if draw(st.booleans()):
        headers["x-sig-bin"] = draw(
            st.one_of(
                st.text(_PRINTABLE_ASCII, max_size=20),
                st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
            )
        )
    return method, path, draw(http_bodies()), headers


yaml_texts = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda rid, host, port, extra: f"readSideId: {rid}\nhost: {host}\nport: {port}\n{extra}",
        st.text(_PRINTABLE_ASCII, max_size=12),
        st.text(_PRINTABLE_ASCII, max_size=12),
        st.one_of(st.integers(-5, 70000).map(str), st.text(_PRINTABLE_ASCII, max_size=6)),
        st.sampled_from(
            ["", "useTls: maybe\n", "failurePolicy: NOPE\n", "enabled: [1, 2]\n", "- x\n", "timeout: -1\n"]
        ),
    ),
)
env_configs = st.dictionaries(
    st.builds(
        lambda setting, rid: f"COS_READ_SIDE_CONFIG__{setting}__{rid}",
        st.sampled_from(
            ["HOST", "PORT", "USE_TLS", "AUTO_START", "ENABLED", "FAILURE_POLICY", "TIMEOUT", "X"]
        ),
        # any characters a variable's name may hold (not "=")
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="), max_size=8),
    ),
    st.text(_PRINTABLE_ASCII, max_size=10),
    max_size=5,
)


# ---- checks -----------------------------------------------------------------------------------------


def _code_of(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as error:
        return error.code(), error  # type: ignore[attr-defined]


def check_grpc_case(channel: grpc.Channel, ledger: Ledger, case: tuple[str, Any]) -> None:
    ledger.cases += 1
    kind, data = case
    if kind == "process":
        entity_id, command, metadata = data
        process = channel.unary_unary(
            SERVICE + "ProcessCommand",
            request_serializer=pb.ProcessCommandRequest.SerializeToString,
            response_deserializer=pb.ProcessCommandResponse.FromString,
        )
        request = pb.ProcessCommandRequest(entity_id=entity_id, command=command)
        code, answer = _code_of(lambda: process(request, metadata=tuple(metadata), timeout=15))
        if code is grpc.StatusCode.OK:
            assert answer.meta.entity_id == entity_id
            if answer.meta.revision_number:
                ledger.acknowledged(entity_id, answer.meta.revision_number)
    elif kind == "get":
        get = channel.unary_unary(
            SERVICE + "GetState",
            request_serializer=pb.GetStateRequest.SerializeToString,
            response_deserializer=pb.GetStateResponse.FromString,
        )
        code, answer = _code_of(lambda: get(pb.GetStateRequest(entity_id=data), timeout=15))
    elif kind == "raw":
        method, payload = data
        raw = channel.unary_unary(SERVICE + method)
        code, answer = _code_of(lambda: raw(payload, timeout=15))
    else:
        entity_id, subscription_id, everything = data
        if everything:
            request_bytes = pb.SubscribeAllRequest(subscription_id=subscription_id).SerializeToString()
            stream = channel.unary_stream(SERVICE + "SubscribeAll")
        else:
            request_bytes = pb.SubscribeRequest(
                entity_id=entity_id, subscription_id=subscription_id
            ).SerializeToString()
            stream = channel.unary_stream(SERVICE + "Subscribe")
        code, answer = _code_of(lambda: list(stream(request_bytes, timeout=0.2)))
    assert code in DOCUMENTED_GRPC, f"{kind}: {code.name} {getattr(answer, 'details', lambda: '')()!r}"


def check_http_case(
    client: httpx.Client, ledger: Ledger, case: tuple[str, str, bytes, dict[str, str]]
) -> None:
    ledger.cases += 1
    method, path, body, headers = case
    # HTTP itself cannot carry a value with leading or trailing spaces (h11 refuses to send one).
    headers = {name: value.strip() for name, value in headers.items() if value.strip()}
    response = client.request(method, path, content=body if method != "GET" else None, headers=headers)
    assert response.status_code in DOCUMENTED_HTTP, (
        f"{method} {path[:80]}: {response.status_code} {response.text[:200]}"
    )
    if response.status_code == 200:
        assert response.headers["content-type"] == "application/json"
        meta = response.json()["meta"]
        if meta.get("revision_number"):
            ledger.acknowledged(meta["entity_id"], meta["revision_number"])
        return
    assert response.headers.get("content-type") == "application/json", (
        f"{response.status_code} {response.text[:200]}"
    )
    answer = response.json()
    assert set(answer) == {"error", "code"} and answer["error"] and answer["code"], answer


def check_yaml_config(text: str) -> None:
    """A read-side YAML definition is accepted or refused with ConfigError naming the problem."""
    try:
        parse_yaml_documents(text, "fuzz.yaml")
    except ConfigError as error:
        assert error.problem


def check_env_config(environ: dict[str, str]) -> None:
    try:
        parse_env_definitions(environ)
    except ConfigError as error:
        assert error.problem


def check_config_on_a_node(target: FuzzTarget, folder: Path, yaml_text: str, environ: dict[str, str]) -> None:
    """A real `cos serve` given a fuzzed read-side configuration either starts, or stops before opening
    a port with exit code 2 and one line naming the variable (decision D9); never a crash."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "read_sides.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    env = node_environment(
        {
            **fuzz_node_environment(),
            **environ,
            "COS_WRITE_SIDE_PORT": str(target.handler.ports["write_side"]),
            "COS_DB_PATH": str(folder / "cos.db"),
            "COS_READ_SIDE_ENABLED": "true",
            "COS_READ_SIDE_CONFIG": str(config),
        }
    )
    node = start_node(env, folder / "logs", name="cos-fuzz-config", wait=False)
    try:
        deadline = time.monotonic() + 60
        alive = f"http://127.0.0.1:{node.ports['management']}/alive"
        while node.alive() and not http_ok(alive):
            assert time.monotonic() < deadline, "the node neither started nor stopped"
            time.sleep(0.1)
    finally:
        node.stop()
    code = node.popen.returncode
    log = node.log_text()
    assert "Traceback" not in log, log[-2000:]
    assert code in (0, 2), f"exit code {code}: {log[-500:]}"
    if code == 2:
        assert "COS_" in log, log[-500:]  # the line names the variable
