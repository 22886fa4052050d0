"""`http.server.request.duration` for the HTTP API, pushed over OTLP (docs/operations.md, "Metrics over
OTLP"): an ASGI wrapper that times each request and reads its status and matched route. Installed only
when metrics are pushed over OTLP; the Prometheus side of the HTTP API is the node's `cos_*` request
metrics, recorded on the command path for both protocols."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from chiefofstate.telemetry.metrics import NodeMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class HttpServerMetrics:
    def __init__(self, app: Asgi, metrics: NodeMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        otlp = self._metrics.otlp
        if scope["type"] != "http" or otlp is None:
            await self._app(scope, receive, send)
            return
        status = 500  # what the client sees if the app fails before it answers
        began = time.perf_counter()

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_noting_status)
        finally:
            route = scope.get("route")
            # the route's template (`/v1/entities/{entityId}/state`), never the raw path: one series
            # per endpoint, whatever the entity ids
            template = getattr(route, "path", None) or "unmatched"
            otlp.http_server(scope["method"], str(template), status, time.perf_counter() - began)
