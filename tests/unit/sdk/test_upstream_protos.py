"""An SDK handler works behind any server speaking upstream's protocol, not only this project's node: a
separate Python process importing nothing of chiefofstate — only modules generated here, with protoc, from
the published `chief_of_state.v1` and `bank.v1` .proto files — calls the bank's write and read handlers
the way an upstream Chief of State server does, and reads their answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from chiefofstate_examples.bank.handlers import Balances, Bank
from grpc_tools import protoc

from chiefofstate.sdk import start

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOTS = (REPO / "src/chiefofstate/protos", REPO / "examples/bank/protos")

# Runs in its own interpreter with only the freshly generated modules on its path.
CALLER = """
import json
import sys

import grpc
from google.protobuf import any_pb2, empty_pb2

from bank.v1 import bank_pb2
from chief_of_state.v1 import common_pb2, readside_pb2, readside_pb2_grpc, writeside_pb2, writeside_pb2_grpc


def packed(message):
    value = any_pb2.Any()
    value.Pack(message)
    return value


write_target, read_target = sys.argv[1], sys.argv[2]
out = {}
with grpc.insecure_channel(write_target) as channel:
    write = writeside_pb2_grpc.WriteSideHandlerServiceStub(channel)
    new = packed(empty_pb2.Empty())  # what upstream sends for an entity with no event yet
    decided = write.HandleCommand(
        writeside_pb2.HandleCommandRequest(
            command=packed(bank_pb2.OpenAccount(owner="ann", initial_balance=70)),
            prior_state=new,
            prior_event_meta=common_pb2.MetaData(entity_id="acc-9"),
        ),
        timeout=10,
    )
    out["deprecated_event_set"] = decided.HasField("event")
    out["events"] = [event.type_url for event in decided.events]
    folded = write.HandleEvent(
        writeside_pb2.HandleEventRequest(
            event=decided.events[0],
            prior_state=new,
            event_meta=common_pb2.MetaData(entity_id="acc-9", revision_number=1),
        ),
        timeout=10,
    )
    account = bank_pb2.BankAccount()
    out["state_unpacked"] = folded.resulting_state.Unpack(account)
    out["balance"] = account.balance
    try:
        write.HandleCommand(
            writeside_pb2.HandleCommandRequest(
                command=packed(bank_pb2.Withdraw(amount=100)),
                prior_state=folded.resulting_state,
                prior_event_meta=common_pb2.MetaData(entity_id="acc-9", revision_number=1),
            ),
            timeout=10,
        )
    except grpc.RpcError as error:
        out["refusal"] = [error.code().name, error.details()]
        trailers = error.trailing_metadata()
        out["status_details"] = [key for key, _ in trailers if key == "grpc-status-details-bin"]
with grpc.insecure_channel(read_target) as channel:
    read = readside_pb2_grpc.ReadSideHandlerServiceStub(channel)
    reply = read.HandleReadSide(
        readside_pb2.HandleReadSideRequest(
            event=decided.events[0],
            state=folded.resulting_state,
            meta=common_pb2.MetaData(entity_id="acc-9", revision_number=1),
            read_side_id="balances",
        ),
        timeout=10,
    )
    out["read_successful"] = reply.successful
print(json.dumps(out))
"""


def generate_upstream_modules(folder: Path) -> None:
    include = str(resources.files("grpc_tools") / "_proto")
    for root in PROTO_ROOTS:
        protos = sorted(str(path.relative_to(root)) for path in root.rglob("*.proto"))
        code = protoc.main(
            [
                "protoc",
                f"-I{root}",
                f"-I{include}",
                f"--python_out={folder}",
                f"--grpc_python_out={folder}",
                *protos,
            ]
        )
        assert code == 0, f"protoc failed on {root}"
    for directory in [path for path in folder.rglob("*") if path.is_dir()]:
        (directory / "__init__.py").touch()


@pytest.mark.slow
async def test_a_client_built_only_from_the_upstream_protos_drives_the_sdk_handlers(tmp_path: Path) -> None:
    generate_upstream_modules(tmp_path)
    (tmp_path / "caller.py").write_text(CALLER)
    balances = Balances()
    write = await start(Bank())
    read = await start(balances)
    try:
        # -E -s: no PYTHONPATH or user site; the caller's own folder holds what protoc made
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-E", "-s", str(tmp_path / "caller.py"), write.address, read.address],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        await write.stop()
        await read.stop()
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["events"] == ["type.googleapis.com/bank.v1.AccountOpened"]
    assert out["deprecated_event_set"] is False
    assert (out["state_unpacked"], out["balance"]) == (True, 70)
    assert out["refusal"] == ["FAILED_PRECONDITION", "insufficient funds: balance 70, requested 100"]
    assert out["status_details"] == ["grpc-status-details-bin"]
    assert out["read_successful"] is True
    assert balances.balances == {"acc-9": 70}
