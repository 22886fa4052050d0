"""The HTTP API's OpenAPI document: what it shows a reader must be what the server does."""

from __future__ import annotations

import base64
from typing import Any

from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.api.http_api import create_http_app
from chiefofstate.api.http_docs import EXAMPLE_COMMAND, EXAMPLE_STATE


def document() -> dict[str, Any]:
    # The document only reads the routes; no command runs while it is built.
    app = create_http_app(None, max_body_bytes=1024, body_timeout_s=1.0)  # type: ignore[arg-type]
    return app.openapi()


def test_the_examples_are_the_bank_messages_they_claim_to_be() -> None:
    command = AnyProto.FromString(base64.b64decode(EXAMPLE_COMMAND))
    opened = bank_pb2.OpenAccount()
    assert command.Unpack(opened) and (opened.owner, opened.initial_balance) == ("Vi", 1000)
    state = AnyProto.FromString(base64.b64decode(EXAMPLE_STATE))
    account = bank_pb2.BankAccount()
    assert state.Unpack(account) and (account.account_id, account.balance) == ("acct-1", 1250)


def test_no_validation_error_the_server_never_sends_and_every_error_has_the_error_body() -> None:
    spec = document()
    assert {"HTTPValidationError", "ValidationError"}.isdisjoint(spec["components"]["schemas"])
    for path in spec["paths"].values():
        for operation in path.values():
            assert "422" not in operation["responses"]
            for status, response in operation["responses"].items():
                if status == "200" or "application/json" not in response.get("content", {}):
                    continue
                body = response["content"]["application/json"]
                assert body["schema"] == {"$ref": "#/components/schemas/ErrorReply"}, status
                assert set(body["example"]) == {"error", "code"}, status
