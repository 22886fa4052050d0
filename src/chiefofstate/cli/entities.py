"""`cos send`, `cos get` and `cos events --follow`: commands, state and live events through a running
node's gRPC API, decoded with the write handler's descriptors (docs/cli.md)."""

from __future__ import annotations

import base64
import binascii
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import typer
from google.protobuf.any_pb2 import Any as AnyProto
from rich.console import Console

from chiefofstate.api.subscription_rpcs import SUBSCRIPTION_ID_HEADER
from chiefofstate.cli.connection import Connection
from chiefofstate.cli.output import fail, print_json
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.inspect.decoding import any_view, compact, meta_view, type_name
from chiefofstate.inspect.descriptors import MessageTypes

JsonObject = dict[str, Any]
Metadata = tuple[tuple[str, str | bytes], ...]


def parse_headers(pairs: Sequence[str]) -> Metadata:
    """`--header key=value` pairs as gRPC metadata; a key ending in `-bin` takes base64 (as over HTTP)."""
    metadata: list[tuple[str, str | bytes]] = []
    for pair in pairs:
        key, separator, value = pair.partition("=")
        key = key.strip().lower()
        if not separator or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--header")
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value, validate=True)))
            except binascii.Error:
                raise typer.BadParameter(
                    f"{key} ends in -bin, so its value must be base64", param_hint="--header"
                ) from None
        else:
            metadata.append((key, value))
    return tuple(metadata)


def _rpc_failure(error: grpc.RpcError, target: str) -> typer.Exit:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code is grpc.StatusCode.UNAVAILABLE:
        details = f"{details} (is a node serving gRPC at {target}?)"
    elif code is grpc.StatusCode.UNIMPLEMENTED and "ubscription" in details:
        details = f"{details} (set COS_SUBSCRIPTION_ENABLED=true on the node at {target})"
    return fail(f"{code.name}: {details}")


def state_view(state: AnyProto, meta: MetaData, types: MessageTypes) -> JsonObject:
    view = meta_view(meta)
    return {
        "entity_id": view["entity_id"],
        "revision": view["revision"],
        "revision_date": view["revision_date"],
        "state": any_view(state, types),
        "headers": view["headers"],
    }


def print_state(view: JsonObject, as_json: bool, console: Console) -> None:
    if as_json:
        print_json(view)
        return
    state = view["state"]
    console.print(
        f"[bold]{view['entity_id']}[/bold] revision {view['revision']} at {view['revision_date'] or '-'}",
        highlight=False,
    )
    console.print(f"state {type_name(state['type'])}: {_shown(state)}", highlight=False, soft_wrap=True)
    if view["headers"]:
        console.print(f"headers: {_headers_line(view['headers'])}", highlight=False, soft_wrap=True)


def _shown(any_json: JsonObject) -> str:
    if any_json["json"] is not None:
        return compact(any_json["json"])
    return f"(undecoded, {len(base64.b64decode(any_json['base64']))} bytes: {any_json['undecoded_reason']})"


def _headers_line(headers: list[JsonObject]) -> str:
    return ", ".join(f"{h['key']}={h.get('string_value', h.get('bytes_value'))}" for h in headers)


def send(
    connection: Connection,
    target: str,
    entity_id: str,
    command: AnyProto,
    metadata: Metadata,
    timeout_s: float,
    types: MessageTypes,
) -> JsonObject:
    with connection.channel(target) as channel:
        try:
            reply: pb.ProcessCommandResponse = ChiefOfStateServiceStub(channel).ProcessCommand(
                pb.ProcessCommandRequest(entity_id=entity_id, command=command),
                metadata=metadata,
                timeout=timeout_s,
            )
        except grpc.RpcError as error:
            raise _rpc_failure(error, target) from None
    return state_view(reply.state, reply.meta, types)


def get(
    connection: Connection,
    target: str,
    entity_id: str,
    metadata: Metadata,
    timeout_s: float,
    types: MessageTypes,
) -> JsonObject | None:
    with connection.channel(target) as channel:
        try:
            reply: pb.GetStateResponse = ChiefOfStateServiceStub(channel).GetState(
                pb.GetStateRequest(entity_id=entity_id), metadata=metadata, timeout=timeout_s
            )
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise _rpc_failure(error, target) from None
    return state_view(reply.state, reply.meta, types)


def follow(
    connection: Connection,
    target: str,
    entity_id: str | None,
    metadata: Metadata,
    count: int | None,
    as_json: bool,
    types: MessageTypes,
    console: Console,
) -> None:
    """Prints each event the node commits (for one entity, or all) until Ctrl-C or `count` events.

    The subscription id is random, so two `cos events --follow` never end each other's stream."""
    subscription_id = f"cos-cli-{uuid.uuid4()}"
    with connection.channel(target) as channel:
        stub = ChiefOfStateServiceStub(channel)
        stream: Any
        if entity_id is None:
            stream = stub.SubscribeAll(
                pb.SubscribeAllRequest(subscription_id=subscription_id), metadata=metadata
            )
        else:
            stream = stub.Subscribe(
                pb.SubscribeRequest(entity_id=entity_id, subscription_id=subscription_id), metadata=metadata
            )
        try:
            # The node sends its headers once the subscription is registered: from here on every
            # committed event reaches this stream, so saying "following" earlier would be a lie.
            registered = any(key == SUBSCRIPTION_ID_HEADER for key, _ in stream.initial_metadata() or ())
            what = "every entity" if entity_id is None else entity_id
            if registered:  # otherwise the stream failed, and reading it raises the node's status
                print(
                    f"following events of {what} (subscription {subscription_id}); Ctrl-C stops",
                    file=sys.stderr,
                )
            for shown, event in enumerate(_events(stream), start=1):
                view = _event_view(event, types)
                if as_json:
                    print_json(view, lines=True)
                else:
                    _print_event_line(view, console)
                if count is not None and shown >= count:
                    break
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.CANCELLED:
                return
            raise _rpc_failure(error, target) from None
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()


def _events(stream: Any) -> Iterator[pb.SubscribeResponse | pb.SubscribeAllResponse]:
    yield from stream


def _event_view(event: pb.SubscribeResponse | pb.SubscribeAllResponse, types: MessageTypes) -> JsonObject:
    meta = meta_view(event.meta)
    return {
        "entity_id": meta["entity_id"],
        "revision": meta["revision"],
        "revision_date": meta["revision_date"],
        "event": any_view(event.event, types),
        "resulting_state": any_view(event.resulting_state, types),
        "headers": meta["headers"],
    }


def _print_event_line(view: JsonObject, console: Console) -> None:
    event = view["event"]
    console.print(
        f"{view['revision_date'] or '-'}  {view['entity_id']}  revision {view['revision']}  "
        f"{type_name(event['type'])} {_shown(event)}",
        highlight=False,
        soft_wrap=True,
    )
