"""The node's certificate for its gRPC, HTTP and cluster ports, reloaded when its files change
(docs/operations.md, "Security").

The files are checked every COS_TLS_RELOAD_INTERVAL, off the event loop. A change is taken only once the
pair loads (a certificate replaced before its key is retried at the next check), and applies to new
connections: gRPC asks for the current configuration at each handshake, the HTTP server switches each new
connection to the current context as its handshake starts, and cluster peers open new channels. Open
connections keep the certificate they were made with. The client CA file (COS_TLS_CLIENT_CA_FILE) is
watched with them: a new CA applies to new handshakes the same way. Whether client certificates are
required at all is decided at start, by whether the variable is set. Files that do not load are logged at
WARN once per change and the current ones stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from chiefofstate.api.file_watch import PeriodicCheck, Signature, signature
from chiefofstate.config.security import TlsSettings

log = logging.getLogger("chiefofstate.tls")


@dataclass(frozen=True, slots=True)
class _KeyPair:
    version: int
    signature: Signature  # of the certificate, key and client CA files
    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    http_context: ssl.SSLContext


_UNREADABLE: Signature = ((-1, -1, -1),)  # a file could not even be looked at


class ServerTls:
    """The current key pair and what each server needs of it."""

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        ca = (settings.client_ca_file,) if settings.client_ca_file is not None else ()
        self._paths: tuple[Path, ...] = (settings.cert_file, settings.key_file, *ca)
        self._pair = self._load(version=1)
        self._checks = PeriodicCheck(self.reload_if_changed, settings.reload_interval_s, "tls-reload")
        self._refused: Signature | None = None

    @property
    def requires_client_certificates(self) -> bool:
        return self._settings.client_ca_file is not None

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
        settings = self._settings
        front = self._new_http_context(settings.cert_file, settings.key_file, self._pair.client_ca)
        front.sni_callback = self._switch_to_current
        return front

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For calls to cluster peers: the node presents its own certificate, and trusts the client CA
        (members' certificates are signed by it) or, without one, the system's roots."""
        pair = self._pair
        return grpc.ssl_channel_credentials(
            root_certificates=pair.client_ca,
            private_key=pair.private_key,
            certificate_chain=pair.certificate_chain,
        )

    # Reloading.
    def start(self) -> None:
        self._checks.start()

    async def close(self) -> None:
        await self._checks.close()

    def reload_if_changed(self) -> bool:
        """Re-read the files if they changed since the last load; True when a new pair was taken."""
        names = " and ".join(str(path) for path in self._paths)
        try:
            current = signature(self._paths)
        except OSError as error:
            self._refuse(_UNREADABLE, f"TLS: cannot check {names}: {error.strerror or error}")
            return False
        if current in (self._pair.signature, self._refused):
            return False
        try:
            pair = self._load(self._pair.version + 1)
        except (OSError, ssl.SSLError, UnicodeDecodeError) as error:
            self._refuse(current, f"TLS: {names} do not load ({error})")
            return False
        self._pair, self._refused = pair, None
        log.warning("TLS: certificate reloaded from %s (version %d)", names, pair.version)
        return True

    def _refuse(self, seen: Signature, why: str) -> None:
        if seen != self._refused:  # once per change of the files, retried when they change again
            log.warning("%s; keeping the current certificate and client CA", why)
        self._refused = seen

    def _load(self, version: int) -> _KeyPair:
        settings = self._settings
        loaded = signature(self._paths)
        chain = settings.cert_file.read_bytes()
        key = settings.key_file.read_bytes()
        client_ca = settings.client_ca_file.read_bytes() if settings.client_ca_file is not None else None
        # Checks that the key matches the certificate and that the CA file holds a certificate.
        context = self._new_http_context(settings.cert_file, settings.key_file, client_ca)
        return _KeyPair(version, loaded, chain, key, client_ca, context)

    def _new_http_context(self, cert_file: Path, key_file: Path, client_ca: bytes | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols(["http/1.1"])
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _switch_to_current(
        self, connection: ssl.SSLSocket | ssl.SSLObject, _server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self._pair.http_context

    def _grpc_configuration(self, pair: _KeyPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=pair.client_ca
        )


async def load_server_tls(settings: TlsSettings) -> ServerTls:
    """The files are read off the event loop."""
    return await asyncio.to_thread(ServerTls, settings)
