"""The example read handler: its projection of balances, its HTTP protocol and its TEST HOOKS."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from chiefofstate_examples.bank.handlers import Account, Balances
from chiefofstate_examples.bank.read_handler import ReadFaults, RecordedBalances, Selector
from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.ports.read_handler import ReadSideCall
from chiefofstate.readside.http import HttpReadHandler
from chiefofstate.sdk.http_serving import http_app
from chiefofstate.sdk.read import handle_read_side


def delivery(
    entity_id: str, revision: int, balance: int, read_side_id: str = "balances"
) -> HandleReadSideRequest:
    state = AnyProto()
    state.Pack(bank_pb2.BankAccount(account_id=entity_id, owner="Ann", balance=balance))
    event = AnyProto()
    event.Pack(bank_pb2.MoneyDeposited(amount=1))
    return HandleReadSideRequest(
        event=event,
        state=state,
        meta=MetaData(entity_id=entity_id, revision_number=revision),
        read_side_id=read_side_id,
    )


def call(entity_id: str, revision: int, balance: int, read_side_id: str = "balances") -> ReadSideCall:
    request = delivery(entity_id, revision, balance, read_side_id)
    wrapper = EventWrapper(event=request.event, resulting_state=request.state, meta=request.meta)
    return ReadSideCall(entity_id, wrapper.SerializeToString(), request.read_side_id)


async def test_the_projection_keeps_the_latest_state_and_ignores_redeliveries() -> None:
    balances = Balances()
    for revision, balance in ((1, 100), (2, 150), (1, 100)):  # at-least-once: an old event again
        assert (await handle_read_side(balances, delivery("acc", revision, balance))).successful
    assert balances.accounts == {"acc": Account("Ann", 150, 2)}
    assert balances.balances == {"acc": 150}


def test_hook_selectors_match_read_side_entity_and_revision() -> None:
    assert Selector.parse("audit/acc@3") == Selector("audit", "acc", 3)
    assert Selector.parse("acc").matches("any", "acc", 9)
    assert Selector.parse("*@2").matches("x", "whatever", 2) and not Selector.parse("*@2").matches(
        "x", "w", 3
    )
    faults = ReadFaults.from_environment(
        {"BANK_READ_FAIL": "audit/acc", "BANK_READ_REFUSE": "acc@2", "BANK_READ_HANG": "slow"}
    )
    assert faults.outcome("audit", "acc", 1) == "failed"
    assert faults.outcome("balances", "acc", 2) == "refused"
    assert faults.outcome("balances", "slow", 1) == "hang"
    assert faults.outcome("balances", "acc", 1) == "ok"
    with pytest.raises(ValueError, match="BANK_READ_DELAY_MS"):
        ReadFaults.from_environment({"BANK_READ_DELAY_MS": "soon"})


async def test_the_http_variant_speaks_the_protocol_cos_sends() -> None:
    log = io.StringIO()
    model = RecordedBalances(
        ReadFaults(refuse=(Selector.parse("acc@2"),), fail=(Selector.parse("audit/acc@3"),)), log
    )
    transport = httpx.ASGITransport(app=http_app(model))
    client = HttpReadHandler("bank", 80, use_tls=False, max_connections=1, transport=transport)
    assert await client.handle(call("acc", 1, 100), 4, 1.0) is True
    assert await client.handle(call("acc", 2, 150), 4, 1.0) is False
    with pytest.raises(Exception, match="HTTP 500"):
        await client.handle(call("acc", 3, 170, read_side_id="audit"), 4, 1.0)
    # the hook names read side `audit`: the same delivery to `balances` is taken
    assert await client.handle(call("acc", 3, 170), 4, 1.0) is True
    await client.close()
    assert model.accounts == {"acc": Account("Ann", 170, 3)}
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(line["revision"], line["outcome"]) for line in lines] == [
        (1, "ok"),
        (2, "refused"),
        (3, "failed"),
        (3, "ok"),
    ]
    assert [line["read_side_id"] for line in lines] == ["balances", "balances", "audit", "balances"]
    assert lines[0]["x_cos_entity_id"] == "acc" and lines[0]["x_cos_event_tag"] == "4"
    assert lines[0]["read_side_id"] == "balances" and lines[0]["balance"] == 100
