"""Events and states as the console shows them: decoded to JSON with the application's descriptors
(a descriptor-set file or the write handler's reflection, as `cos inspect` does), raw bytes otherwise.

Reflection asks the write handler with a blocking call the first time it meets a type, so decoding runs
on one thread of its own, never on the event loop; one thread, as the descriptor pool is not shared
safely between threads."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.inspect.decoding import decode_any, type_name
from chiefofstate.inspect.descriptors import MessageTypes

MAX_RAW_BYTES = 4096  # of an undecoded message shown on a page; the rest is cut


@dataclass(frozen=True, slots=True)
class Shown:
    """One Any message for a page: its type, and its JSON or its bytes (hex and base64)."""

    type_name: str
    json_text: str | None
    reason: str | None = None
    hex_text: str = ""
    base64_text: str = ""
    size: int = 0


def show(value: AnyProto, types: MessageTypes) -> Shown:
    name = type_name(value.type_url) if value.type_url else "(empty)"
    decoded, reason = decode_any(value, types)
    if decoded is not None:
        return Shown(name, json.dumps(decoded, indent=2, ensure_ascii=False), size=len(value.value))
    raw = value.value[:MAX_RAW_BYTES]
    return Shown(
        name,
        None,
        reason,
        hex_text=raw.hex(" "),
        base64_text=base64.b64encode(raw).decode("ascii"),
        size=len(value.value),
    )


class Decoder:
    """Decodes on its own thread; `close` lets it finish."""

    def __init__(self, types: MessageTypes) -> None:
        self.types = types
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-decoder")

    async def show_all(self, values: Sequence[AnyProto]) -> list[Shown]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: [show(value, self.types) for value in values])

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
