import logging
import os
from pathlib import Path

import pytest

from chiefofstate.api.tls import ServerTls
from chiefofstate.config.security import TlsSettings
from tests.support.certificates import CertificateAuthority


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def test_a_changed_pair_is_taken_and_an_unchanged_one_is_not(ca: CertificateAuthority) -> None:
    first = ca.issue("node")
    tls = ServerTls(TlsSettings(first.cert_file, first.key_file, None))
    assert tls.version == 1 and not tls.reload_if_changed()
    ca.issue("node", cert_file=first.cert_file, key_file=first.key_file)
    assert tls.reload_if_changed() and tls.version == 2
    assert not tls.reload_if_changed()


def test_a_certificate_without_its_new_key_is_kept_out_until_the_key_arrives(
    ca: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ca.issue("node")
    tls = ServerTls(TlsSettings(first.cert_file, first.key_file, None))
    staged = ca.issue("next", cert_file=tmp_path / "next.crt", key_file=tmp_path / "next.key")
    os.replace(staged.cert_file, first.cert_file)  # the certificate first; the old key no longer matches
    with caplog.at_level(logging.WARNING, logger="chiefofstate.tls"):
        assert not tls.reload_if_changed() and not tls.reload_if_changed()
    assert tls.version == 1
    assert len([r for r in caplog.records if "do not load" in r.getMessage()]) == 1  # warned once
    os.replace(staged.key_file, first.key_file)
    assert tls.reload_if_changed() and tls.version == 2


def test_client_certificates_are_required_only_with_a_client_ca(ca: CertificateAuthority) -> None:
    node = ca.issue("node")
    assert not ServerTls(TlsSettings(node.cert_file, node.key_file, None)).requires_client_certificates
    assert ServerTls(TlsSettings(node.cert_file, node.key_file, ca.cert_file)).requires_client_certificates
