"""The JSON body of a ProcessCommand or GetState answer over HTTP, straight from the reply's bytes.

Every successful HTTP call ends here, so the common shape — a state and a meta of entity id, revision
and date — is written without the descriptor walk of `message_to_json` (three times its cost); a meta
carrying extension data or persisted headers takes that general encoder. Both give the same bytes:
§8.4 JSON (docs/contract.md) as starlette's JSONResponse renders it (UTF-8, no spaces), which
tests/unit/api/test_http_json.py checks against the general encoder.
"""

from __future__ import annotations

import json

from chiefofstate.core.json_codec import encode_any, format_timestamp, message_to_json
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb

# What starlette's JSONResponse.render does, without building a response object per call.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode


def state_reply_json(reply: bytes) -> bytes:
    """The §8.4 JSON of a serialized GetStateResponse (ProcessCommandResponse has the same fields)."""
    message = pb.GetStateResponse.FromString(reply)
    meta = message.meta
    if len(meta.data) or len(meta.headers):
        return _encode(message_to_json(message)).encode()
    body: dict[str, object] = {}
    state = message.state
    if message.HasField("state") and (state.type_url or state.value):
        body["state"] = encode_any(state)
    if message.HasField("meta"):
        encoded_meta: dict[str, object] = {}
        if meta.entity_id:
            encoded_meta["entity_id"] = meta.entity_id
        if meta.revision_number:
            encoded_meta["revision_number"] = meta.revision_number
        if meta.HasField("revision_date"):
            encoded_meta["revision_date"] = format_timestamp(meta.revision_date)
        body["meta"] = encoded_meta
    return _encode(body).encode()
