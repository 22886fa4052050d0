"""`cos serve` tries each port before the node starts: a port another process holds is one line
naming the port and its variable, and exit 2, before anything is opened or migrated
(docs/operations.md, "Start-up failures")."""

from __future__ import annotations

import errno
import socket

from chiefofstate.config.ports import Listener
from chiefofstate.core.errors import ConfigError


def _families(listener: Listener) -> list[tuple[socket.AddressFamily, tuple[object, ...]]]:
    try:
        infos = socket.getaddrinfo(
            listener.address or None, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ConfigError(
            listener.address_variable, f"{listener.address!r} does not resolve ({error.strerror})"
        ) from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos[:1]]


def check_free(found: list[Listener], *, skip_shared: bool = False) -> None:
    """Binds and releases each port as the servers will (SO_REUSEADDR, no SO_REUSEPORT), so a port
    held by a listening process fails here. `skip_shared`: a worker's shared ports are already held by
    its siblings, on purpose."""
    for listener in found:
        if listener.port == 0 or (skip_shared and listener.shared_by_workers):
            continue
        for family, sockaddr in _families(listener):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(sockaddr)
                except OSError as error:
                    if error.errno == errno.EADDRINUSE:
                        problem = (
                            f"port {listener.port} on {listener.address} is already in use by another process"
                        )
                    elif error.errno == errno.EACCES:
                        problem = (
                            f"port {listener.port} on {listener.address} needs privileges this process lacks"
                        )
                    elif error.errno == errno.EADDRNOTAVAIL:
                        raise ConfigError(
                            listener.address_variable, f"{listener.address} is not an address of this machine"
                        ) from None
                    else:
                        problem = f"cannot bind {listener.address}:{listener.port} ({error.strerror})"
                    raise ConfigError(listener.variable, problem) from None
