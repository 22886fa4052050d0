"""Which descriptors a `cos` command decodes events and states with (docs/cli.md, "Decoding events and
state"): `--descriptors FILE` when given, otherwise the write handler's gRPC server reflection at
`--handler HOST:PORT`, which defaults to the node's own COS_WRITE_SIDE_HOST and COS_WRITE_SIDE_PORT."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated

import grpc
import typer

from chiefofstate.inspect.descriptors import (
    MessageTypes,
    NoTypes,
    ReflectionTypes,
    from_descriptor_set,
)

DescriptorsFile = Annotated[
    Path | None,
    typer.Option(
        "--descriptors",
        envvar="COS_CLI_DESCRIPTORS",
        help="a FileDescriptorSet (protoc --include_imports --descriptor_set_out) holding the "
        "application's event, state and command types; default: the write handler's reflection",
        show_default=False,
    ),
]
HandlerAddress = Annotated[
    str | None,
    typer.Option(
        "--handler",
        envvar="COS_CLI_HANDLER",
        metavar="HOST:PORT",
        help="the write handler to ask for descriptors by gRPC server reflection; default: "
        "COS_WRITE_SIDE_HOST:COS_WRITE_SIDE_PORT",
        show_default=False,
    ),
]


def handler_address(given: str | None, environ: Mapping[str, str]) -> str | None:
    if given:
        return given
    host, port = environ.get("COS_WRITE_SIDE_HOST"), environ.get("COS_WRITE_SIDE_PORT")
    if not host or not port:
        return None
    if environ.get("COS_WRITE_SIDE_PROTOCOL", "grpc").lower() == "http":
        return None  # an HTTP write handler has no gRPC reflection to ask
    return f"{host}:{port}"


@contextlib.contextmanager
def message_types(descriptors: Path | None, handler: str | None) -> Iterator[MessageTypes]:
    """Raises DescriptorsUnavailable for a file that cannot be read; a handler is only dialled when a
    type is first needed, and its failure is reported then."""
    if descriptors is not None:
        yield from_descriptor_set(descriptors)
        return
    address = handler_address(handler, os.environ)
    if address is None:
        yield NoTypes(
            "no descriptors: give --descriptors FILE, or --handler HOST:PORT for a write handler "
            "that serves gRPC server reflection"
        )
        return
    with grpc.insecure_channel(address) as channel:
        yield ReflectionTypes(channel, address)
