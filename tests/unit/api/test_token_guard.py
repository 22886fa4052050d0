"""The registration-time token check on a real in-process grpc.aio server, for each of the four handler
kinds, with the tokens file changing under it."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from chiefofstate.api.auth import guarded_handler, token_checking_server
from chiefofstate.api.token_file import TokenFile
from chiefofstate.core.auth import parse_tokens

Context = aio.ServicerContext[Any, Any]
CLIENT = "/chief_of_state.v1.ChiefOfStateService/"  # any method here needs a client token
ADMIN = "/chief_of_state.v1.ReadSideManagerService/"


def _same(data: bytes) -> bytes:
    return data


async def unary(request: bytes, _context: Context) -> bytes:
    return b"u:" + request


async def replies(request: bytes, _context: Context) -> AsyncIterator[bytes]:
    for number in range(3):
        yield b"%d:" % number + request


async def written(request: bytes, context: Context) -> None:
    await context.write(b"w:" + request)


async def gathered(requests: AsyncIterator[bytes], _context: Context) -> bytes:
    return b"".join([request async for request in requests])


async def echoed(requests: AsyncIterator[bytes], _context: Context) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary, _same, _same),
    "Stream": grpc.unary_stream_rpc_method_handler(replies, _same, _same),
    "Written": grpc.unary_stream_rpc_method_handler(written, _same, _same),
    "Gather": grpc.stream_unary_rpc_method_handler(gathered, _same, _same),
    "Echo": grpc.stream_stream_rpc_method_handler(echoed, _same, _same),
}


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[aio.Channel, TokenFile]]:
    path = tmp_path / "tokens"
    path.write_text("client-token client\nadmin-token admin\n")
    tokens = TokenFile(path, parse_tokens(path.read_text()), interval_s=1.0)
    server = aio.server()
    registry = token_checking_server(server, tokens)
    for service in ("chief_of_state.v1.ChiefOfStateService", "chief_of_state.v1.ReadSideManagerService"):
        registry.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, HANDLERS)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, tokens
    finally:
        await channel.close()
        await server.stop(None)


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def outcome(
    channel: aio.Channel, prefix: str, method: str, token: str | None, refused: bool = False
) -> object:
    """The answer of `method`, or the status code it was refused with. A call expected to be refused
    streams no requests: grpc.aio's client reports its own INTERNAL ("Failed execute_batch") instead of
    the server's status when the server ends a call while the client is still sending."""
    path, metadata = prefix + method, bearer(token)

    async def two() -> AsyncIterator[bytes]:
        for request in () if refused else (b"a", b"b"):
            yield request

    try:
        if method == "Unary":
            return await channel.unary_unary(path, _same, _same)(b"x", metadata=metadata, timeout=10)
        if method in ("Stream", "Written"):
            call = channel.unary_stream(path, _same, _same)(b"x", metadata=metadata, timeout=10)
            return [reply async for reply in call]
        if method == "Gather":
            return await channel.stream_unary(path, _same, _same)(two(), metadata=metadata, timeout=10)
        call = channel.stream_stream(path, _same, _same)(two(), metadata=metadata, timeout=10)
        return [reply async for reply in call]
    except aio.AioRpcError as error:
        return error.code()


EXPECTED = {
    "Unary": b"u:x",
    "Stream": [b"0:x", b"1:x", b"2:x"],
    "Written": [b"w:x"],
    "Gather": b"ab",
    "Echo": [b"a", b"b"],
}


@pytest.mark.parametrize("method", list(HANDLERS))
async def test_every_handler_kind_is_refused_without_a_good_enough_token(
    guarded: tuple[aio.Channel, TokenFile], method: str
) -> None:
    channel, _ = guarded
    unauthenticated, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    assert await outcome(channel, CLIENT, method, None, refused=True) == unauthenticated
    assert await outcome(channel, CLIENT, method, "wrong", refused=True) == unauthenticated
    assert await outcome(channel, CLIENT, method, "client-token") == EXPECTED[method]
    assert await outcome(channel, CLIENT, method, "admin-token") == EXPECTED[method]
    assert await outcome(channel, ADMIN, method, "client-token", refused=True) == denied
    assert await outcome(channel, ADMIN, method, "admin-token") == EXPECTED[method]


async def test_a_reloaded_tokens_file_applies_to_the_next_call(
    guarded: tuple[aio.Channel, TokenFile],
) -> None:
    channel, tokens = guarded
    staged = tokens.path.with_suffix(".new")
    staged.write_text("rotated client\n")
    staged.replace(tokens.path)
    assert tokens.reload_if_changed()
    assert (
        await outcome(channel, CLIENT, "Unary", "client-token", refused=True)
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert await outcome(channel, CLIENT, "Unary", "rotated") == b"u:x"


def test_open_services_are_not_wrapped_and_plain_functions_are_refused_at_registration(
    tmp_path: Path,
) -> None:
    tokens = TokenFile(tmp_path / "absent", parse_tokens("t client\n"), interval_s=1.0)
    health = HANDLERS["Unary"]
    assert guarded_handler("/grpc.health.v1.Health/Check", health, tokens) is health
    plain = grpc.unary_unary_rpc_method_handler(lambda request, context: request, _same, _same)
    with pytest.raises(TypeError, match="async"):
        guarded_handler(CLIENT + "Plain", plain, tokens)
