"""The node's certificate for its gRPC, HTTP and cluster ports, reloaded when its files change
(docs/operations.md, "Security").

The files are checked every COS_TLS_RELOAD_INTERVAL, off the event loop. A change is taken only once the
pair loads (a certificate replaced before its key is retried at the next check), and applies to new
connections: gRPC asks for the current configuration at each handshake, the HTTP server switches each new
connection to the current context as its handshake starts, and cluster peers open new channels. Open
connections keep the certificate they were made with. The client CA file is read at start.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from chiefofstate.config.security import TlsSettings

log = logging.getLogger("chiefofstate.tls")


@dataclass(frozen=True, slots=True)
class _KeyPair:
    version: int
    signature: tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of the certificate and key files
    certificate_chain: bytes
    private_key: bytes
    http_context: ssl.SSLContext


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    stats = [path.stat() for path in paths]
    return tuple((stat.st_ino, stat.st_size, stat.st_mtime_ns) for stat in stats)


class ServerTls:
    """The current key pair and what each server needs of it."""

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        self._client_ca = settings.client_ca_file.read_bytes() if settings.client_ca_file else None
        self._pair = self._load(version=1)
        self._task: asyncio.Task[None] | None = None
        self._refused: tuple[tuple[int, int, int], ...] | None = None

    @property
    def requires_client_certificates(self) -> bool:
        return self._client_ca is not None

    @property
    def version(self) -> int:
        return self._pair.version

    # What the servers and peers use.
    def grpc_server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for one gRPC server, which asks for a newer configuration at each handshake."""
        served = self._pair.version

        def configuration_if_changed() -> grpc.ServerCertificateConfiguration | None:
            # Called from gRPC's own threads: it only reads what the watcher set.
            nonlocal served
            pair = self._pair
            if pair.version == served:
                return None
            served = pair.version
            return self._grpc_configuration(pair)

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(self._pair),
            configuration_if_changed,  # type: ignore[arg-type]  # the stubs miss that None means "unchanged"
            require_client_authentication=self.requires_client_certificates,
        )

    def http_context(self) -> ssl.SSLContext:
        """The context the HTTP server listens with: every handshake moves to the current pair's context."""
        front = self._new_http_context(self._settings.cert_file, self._settings.key_file)
        front.sni_callback = self._switch_to_current
        return front

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For calls to cluster peers: the node presents its own certificate, and trusts the client CA
        (members' certificates are signed by it) or, without one, the system's roots."""
        pair = self._pair
        return grpc.ssl_channel_credentials(
            root_certificates=self._client_ca,
            private_key=pair.private_key,
            certificate_chain=pair.certificate_chain,
        )

    # Reloading.
    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="tls-reload")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_interval_s)
            await asyncio.to_thread(self.reload_if_changed)

    def reload_if_changed(self) -> bool:
        """Re-read the files if they changed since the last load; True when a new pair was taken."""
        settings = self._settings
        try:
            signature = _signature((settings.cert_file, settings.key_file))
        except OSError as error:
            log.warning(
                "TLS: cannot check %s: %s; keeping the current certificate", settings.cert_file, error
            )
            return False
        if signature in (self._pair.signature, self._refused):
            return False
        try:
            pair = self._load(self._pair.version + 1)
        except (OSError, ssl.SSLError) as error:
            self._refused = signature  # warned once per change, retried when the files change again
            log.warning(
                "TLS: %s and %s do not load (%s); keeping the current certificate",
                settings.cert_file,
                settings.key_file,
                error,
            )
            return False
        self._pair = pair
        log.warning("TLS: certificate reloaded from %s (version %d)", settings.cert_file, pair.version)
        return True

    def _load(self, version: int) -> _KeyPair:
        settings = self._settings
        signature = _signature((settings.cert_file, settings.key_file))
        chain = settings.cert_file.read_bytes()
        key = settings.key_file.read_bytes()
        context = self._new_http_context(settings.cert_file, settings.key_file)  # checks that they match
        return _KeyPair(version, signature, chain, key, context)

    def _new_http_context(self, cert_file: Path, key_file: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols(["http/1.1"])
        if self._client_ca is not None:
            context.load_verify_locations(cadata=self._client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _switch_to_current(
        self, connection: ssl.SSLSocket | ssl.SSLObject, _server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self._pair.http_context

    def _grpc_configuration(self, pair: _KeyPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=self._client_ca
        )


async def load_server_tls(settings: TlsSettings) -> ServerTls:
    """The files are read off the event loop."""
    return await asyncio.to_thread(ServerTls, settings)
