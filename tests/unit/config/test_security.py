from pathlib import Path

import pytest

from chiefofstate.config.settings import load_settings
from chiefofstate.core.auth import Role
from chiefofstate.core.errors import ConfigError
from tests.support.certificates import CertificateAuthority

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


def rejects(variable: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **env})
    assert caught.value.variable == variable
    return str(caught.value)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


def test_everything_is_off_by_default_and_operator_ports_follow_cos_address() -> None:
    settings = load_settings({**BASE, "COS_ADDRESS": "10.0.0.5"})
    assert settings.security.tls is None and settings.security.tokens is None
    assert settings.security.reflection_enabled
    assert settings.server.management_address == settings.server.prometheus_address == "10.0.0.5"


def test_operator_ports_and_reflection_have_their_own_settings() -> None:
    settings = load_settings(
        {
            **BASE,
            "COS_MANAGEMENT_ADDRESS": "127.0.0.1",
            "COS_PROMETHEUS_ADDRESS": "10.1.1.1",
            "COS_GRPC_REFLECTION_ENABLED": "false",
        }
    )
    assert settings.server.management_address == "127.0.0.1"
    assert settings.server.prometheus_address == "10.1.1.1"
    assert settings.server.address == "0.0.0.0" and not settings.security.reflection_enabled


def test_a_certificate_and_its_key_turn_tls_on(ca: CertificateAuthority) -> None:
    node = ca.issue("node")
    tls = load_settings(
        {
            **BASE,
            "COS_TLS_CERT_FILE": str(node.cert_file),
            "COS_TLS_KEY_FILE": str(node.key_file),
            "COS_TLS_CLIENT_CA_FILE": str(ca.cert_file),
        }
    ).security.tls
    assert tls is not None and tls.cert_file == node.cert_file and tls.client_ca_file == ca.cert_file
    assert tls.reload_interval_s == 5.0


def test_tls_files_are_checked_at_start(ca: CertificateAuthority, tmp_path: Path) -> None:
    node, other = ca.issue("node"), ca.issue("other")
    cert, key = str(node.cert_file), str(node.key_file)
    assert "COS_TLS_CERT_FILE" in rejects("COS_TLS_KEY_FILE", COS_TLS_CERT_FILE=cert)
    rejects("COS_TLS_CERT_FILE", COS_TLS_KEY_FILE=key)
    assert "cannot read" in rejects(
        "COS_TLS_CERT_FILE", COS_TLS_CERT_FILE=str(tmp_path / "missing.pem"), COS_TLS_KEY_FILE=key
    )
    assert "not a PEM certificate chain and its key" in rejects(
        "COS_TLS_CERT_FILE", COS_TLS_CERT_FILE=cert, COS_TLS_KEY_FILE=str(other.key_file)
    )
    rejects("COS_TLS_CLIENT_CA_FILE", COS_TLS_CLIENT_CA_FILE=str(ca.cert_file))
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    rejects(
        "COS_TLS_CLIENT_CA_FILE",
        COS_TLS_CERT_FILE=cert,
        COS_TLS_KEY_FILE=key,
        COS_TLS_CLIENT_CA_FILE=str(not_pem),
    )


def test_tokens_file_is_read_at_start(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nsecret-a admin\n\nsecret-c client\n")
    book = load_settings({**BASE, "COS_AUTH_TOKENS_FILE": str(tokens)}).security.tokens
    assert book is not None and book.role_of("secret-a") is Role.ADMIN
    tokens.write_text("secret-a admin\nsecret-b reader\n")
    message = rejects("COS_AUTH_TOKENS_FILE", COS_AUTH_TOKENS_FILE=str(tokens))
    assert "line 2" in message and "client or admin" in message and "secret-b" not in message
    rejects("COS_AUTH_TOKENS_FILE", COS_AUTH_TOKENS_FILE=str(tmp_path / "absent"))
