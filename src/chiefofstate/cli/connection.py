"""How `cos readside`, `cos send`, `cos get` and `cos events --follow` reach a node: plaintext, TLS or
mutual TLS, with or without a bearer token (docs/operations.md, "Security"). For `cos readside` the
options go before the subcommand; each has an environment variable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

Token = Annotated[
    str | None,
    typer.Option(
        envvar="COS_CLI_TOKEN",
        help="bearer token sent as `authorization: Bearer <token>` (read-side commands need an admin one)",
        show_default=False,
    ),
]
CaFile = Annotated[
    Path | None,
    typer.Option(envvar="COS_CLI_CA_FILE", help="PEM CA certificates to verify the node with; implies --tls"),
]
CertFile = Annotated[
    Path | None,
    typer.Option(envvar="COS_CLI_CERT_FILE", help="PEM client certificate for mutual TLS; implies --tls"),
]
KeyFile = Annotated[Path | None, typer.Option(envvar="COS_CLI_KEY_FILE", help="the client certificate's key")]
Tls = Annotated[
    bool,
    typer.Option(envvar="COS_CLI_TLS", help="connect with TLS, trusting the system's CA certificates"),
]


@dataclass(frozen=True)
class Connection:
    token: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def check(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise typer.BadParameter("--cert-file and --key-file go together")
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None and not path.is_file():
                raise typer.BadParameter(f"{path} is not a readable file")

    @property
    def secure(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def channel(self, target: str) -> grpc.Channel:
        if self.secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
                private_key=self.key_file.read_bytes() if self.key_file else None,
                certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
            )
            channel = grpc.secure_channel(target, credentials)
        else:
            channel = grpc.insecure_channel(target)
        if self.token is None:
            return channel
        return grpc.intercept_channel(channel, _BearerToken(self.token))


_chosen = [Connection()]  # one command per process: what the group's options chose for it


def use_connection(connection: Connection) -> None:
    connection.check()
    _chosen[0] = connection


def current_connection() -> Connection:
    """What the group's options chose; plaintext without a token unless they chose otherwise."""
    return _chosen[0]


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[[grpc.ClientCallDetails, Any], Any], details: Any, request: Any
    ) -> Any:
        # `cos events --follow`: a subscription is a server stream
        return continuation(self._with_token(details), request)
