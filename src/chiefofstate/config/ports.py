"""The ports a node listens on, by the variable that sets each, and the rule that no two share one
(docs/operations.md, "Start-up failures"). Pure: nothing is bound here."""

from __future__ import annotations

from dataclasses import dataclass

from chiefofstate.config.settings import Settings
from chiefofstate.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Listener:
    variable: str  # the setting that chooses the port, named in every error about it
    address: str
    port: int
    shared_by_workers: bool  # bound with SO_REUSEPORT by each worker of `cos serve --workers N`
    address_variable: str


def listeners(settings: Settings) -> list[Listener]:
    """Every port `cos serve` binds with these settings, in the order it binds them."""
    server = settings.server
    found = [
        Listener(
            "COS_MANAGEMENT_PORT",
            server.management_address,
            server.management_port,
            True,
            "COS_MANAGEMENT_ADDRESS",
        ),
        Listener(
            "COS_PROMETHEUS_PORT",
            server.prometheus_address,
            server.prometheus_port,
            False,
            "COS_PROMETHEUS_ADDRESS",
        ),
    ]
    if settings.cluster.enabled:
        found.append(
            Listener("COS_CLUSTER_PORT", server.address, settings.cluster.port, False, "COS_ADDRESS")
        )
    if server.protocol in ("grpc", "both"):
        found.append(Listener("COS_PORT", server.address, server.port, True, "COS_ADDRESS"))
    if server.protocol in ("http", "both"):
        found.append(
            Listener("COS_HTTP_PORT", server.http_address, server.http_port, True, "COS_HTTP_ADDRESS")
        )
    return found


def _overlap(first: str, second: str) -> bool:
    """Two binds of one port clash unless both name different specific addresses."""
    wildcard = {"", "0.0.0.0", "::", "[::]"}
    return first in wildcard or second in wildcard or first == second


def check_distinct_ports(found: list[Listener]) -> None:
    """Raises ConfigError naming both variables when two servers would take the same port (0 is any
    free port, so never a clash)."""
    for index, listener in enumerate(found):
        for earlier in found[:index]:
            if (
                listener.port
                and listener.port == earlier.port
                and _overlap(listener.address, earlier.address)
            ):
                raise ConfigError(
                    listener.variable,
                    f"port {listener.port} is also {earlier.variable}'s; give each server its own port",
                )
