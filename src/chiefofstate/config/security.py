"""TLS, bearer tokens, reflection and the operator ports' bind addresses (docs/operations.md, "Security").

All of it is off by default, as upstream has none of it. Files named by the variables are read and checked
here, at start, so that a missing file, a key that does not match its certificate or a bad tokens line
stops the node with exit code 2 instead of failing the first client. A running node re-reads them every
COS_TLS_RELOAD_INTERVAL (api/tls.py, api/token_file.py) and keeps what it has when a new version is bad.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from chiefofstate.config.parsing import Env
from chiefofstate.core.auth import TokenBook, TokensFileError, parse_tokens
from chiefofstate.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None  # set: clients (and cluster peers) must present a certificate it signed
    reload_interval_s: float = 5.0  # how often the certificate, key and client CA files are checked


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    tls: TlsSettings | None = None
    tokens: TokenBook | None = None  # as read at start from tokens_file
    tokens_file: Path | None = None
    reflection_enabled: bool = True
    reload_interval_s: float = 5.0  # how often the TLS and tokens files are checked for changes


def _readable(env: Env, name: str) -> Path | None:
    raw = env.text(name, "").strip()
    if not raw:
        return None
    path = Path(raw)
    try:
        path.read_bytes()
    except OSError as error:
        raise ConfigError(name, f"cannot read {raw}: {error.strerror or error}") from None
    return path


def _reload_interval(env: Env) -> float:
    interval = env.duration("COS_TLS_RELOAD_INTERVAL", "5s")
    if not 0 < interval <= 3600:
        raise ConfigError("COS_TLS_RELOAD_INTERVAL", f"must be above 0 and at most 1h (got {interval:g}s)")
    return interval


def _tls(env: Env, interval: float) -> TlsSettings | None:
    cert = _readable(env, "COS_TLS_CERT_FILE")
    key = _readable(env, "COS_TLS_KEY_FILE")
    client_ca = _readable(env, "COS_TLS_CLIENT_CA_FILE")
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("COS_TLS_CLIENT_CA_FILE", "needs COS_TLS_CERT_FILE and COS_TLS_KEY_FILE")
        return None
    if cert is None or key is None:
        missing = "COS_TLS_CERT_FILE" if cert is None else "COS_TLS_KEY_FILE"
        raise ConfigError(missing, "must be set with the other of COS_TLS_CERT_FILE and COS_TLS_KEY_FILE")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ConfigError(
            "COS_TLS_CERT_FILE", f"{cert} and {key} are not a PEM certificate chain and its key ({error})"
        ) from None
    if client_ca is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(client_ca)
        except ssl.SSLError as error:
            raise ConfigError(
                "COS_TLS_CLIENT_CA_FILE", f"{client_ca} holds no PEM certificate ({error})"
            ) from None
    return TlsSettings(cert, key, client_ca, interval)


def _tokens(path: Path | None) -> TokenBook | None:
    if path is None:
        return None
    try:
        return parse_tokens(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError("COS_AUTH_TOKENS_FILE", f"{path} is not UTF-8 text") from None
    except TokensFileError as error:
        raise ConfigError("COS_AUTH_TOKENS_FILE", f"{path}: {error}") from None


def load_security_settings(env: Env) -> SecuritySettings:
    interval = _reload_interval(env)
    tokens_file = _readable(env, "COS_AUTH_TOKENS_FILE")
    return SecuritySettings(
        tls=_tls(env, interval),
        tokens=_tokens(tokens_file),
        tokens_file=tokens_file,
        reflection_enabled=env.boolean("COS_GRPC_REFLECTION_ENABLED", True),
        reload_interval_s=interval,
    )
