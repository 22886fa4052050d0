"""Channel options shared by both clients: plaintext or TLS (server CA, client certificate for mutual TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Tls:
    """TLS to the node (COS_TLS_CERT_FILE on the server). `ca_file`: PEM CAs that signed the node's
    certificate (None: the system's trusted roots); `cert_file`/`key_file`: this client's certificate, for
    nodes that require one (COS_TLS_CLIENT_CA_FILE); `server_name`: the name to check the node's
    certificate against when it differs from the target's host."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self) -> list[tuple[str, str]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]
