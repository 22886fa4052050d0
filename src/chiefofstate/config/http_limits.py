"""COS_HTTP_* bounds on the HTTP API's connections (docs/operations.md, "HTTP connection limits")."""

from __future__ import annotations

from dataclasses import dataclass

from chiefofstate.config.parsing import Env
from chiefofstate.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int = 4096
    max_header_bytes: int = 32 * 1024  # request line and headers; more is refused with 431
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 10.0  # from the end of the headers to the end of the body
    keep_alive_timeout_s: float = 5.0  # idle before the first request and between requests
    tls_handshake_timeout_s: float = 10.0  # TCP accepted → TLS handshake done (with COS_TLS_CERT_FILE)


def _bounded_duration(env: Env, name: str, default: str, maximum_s: float) -> float:
    seconds = env.duration(name, default)
    if not 0 < seconds <= maximum_s:
        raise ConfigError(name, f"must be above 0 and at most {maximum_s:g}s (got {seconds:g}s)")
    return seconds


def load_http_limits(env: Env) -> HttpLimits:
    return HttpLimits(
        max_connections=env.integer("COS_HTTP_MAX_CONNECTIONS", 4096, minimum=1, maximum=1_000_000),
        max_header_bytes=env.integer("COS_HTTP_MAX_HEADER_SIZE", 32 * 1024, minimum=1024, maximum=1 << 24),
        header_timeout_s=_bounded_duration(env, "COS_HTTP_HEADER_TIMEOUT", "10s", 3600),
        body_timeout_s=_bounded_duration(env, "COS_HTTP_BODY_TIMEOUT", "10s", 3600),
        keep_alive_timeout_s=_bounded_duration(env, "COS_HTTP_KEEP_ALIVE_TIMEOUT", "5s", 3600),
        tls_handshake_timeout_s=_bounded_duration(env, "COS_HTTP_TLS_HANDSHAKE_TIMEOUT", "10s", 3600),
    )
