"""The standard HTTP server span for every request to the HTTP API, as OpenTelemetry's ASGI
instrumentation makes it: kind SERVER, named after the method and route template, with
`http.request.method`, `http.route` and `http.response.status_code`, in the caller's trace (W3C
`traceparent` and the other propagators of OTEL_PROPAGATORS). The command path's own span
(`CosService.processCommand`, …) is its child (docs/operations.md, "Tracing"). Installed only when
tracing is on."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chiefofstate.api.http_metrics import Asgi, Message, Receive, Scope, Send
from chiefofstate.telemetry.tracing import Tracing


class HttpServerSpans:
    def __init__(self, app: Asgi, tracing: Tracing) -> None:
        self._app = app
        self._tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method = str(scope["method"])
        headers = tuple((key.decode("latin-1"), value.decode("latin-1")) for key, value in scope["headers"])
        span = self._tracing.tracer.start_span(
            method,  # renamed once the route is known
            context=self._tracing.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": str(scope.get("scheme", "http"))},
        )
        status = 500  # what the client sees if the app fails before it answers

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self._app(scope, receive, send_noting_status)
        finally:
            otel_context.detach(token)
            template = getattr(scope.get("route"), "path", None)
            if template is not None:
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", str(template))
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(status)))
            span.end()
