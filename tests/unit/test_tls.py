"""asap.tls: certificate identities, the system trust store, reload rules (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asap import tls
from asap.tls import ClientTLS, PeerCertificate, ServerTLS, certificate_from_ssl


@pytest.mark.parametrize(
    ("certificate", "expected"),
    [
        (
            PeerCertificate(("urn:asap:agent:a", "spiffe://x"), ("a.example",), "cn"),
            "urn:asap:agent:a",
        ),
        (PeerCertificate((), ("a.example", "b.example"), "cn"), "a.example"),
        (PeerCertificate((), (), "cn"), "cn"),
        (PeerCertificate(), None),
        (PeerCertificate(common_name=""), None),
    ],
)
def test_default_identity_is_uri_then_dns_then_cn(
    certificate: PeerCertificate, expected: str | None
) -> None:
    assert tls.default_certificate_identity(certificate) == expected


def test_getpeercert_fields_become_a_peer_certificate() -> None:
    fields = {
        "subject": (
            (("organizationName", "o"),),
            (("commonName", "first"),),
            (("commonName", "x"),),
        ),
        "subjectAltName": (
            ("DNS", "a.example"),
            ("URI", "urn:asap:agent:a"),
            ("IP Address", "192.0.2.1"),
            ("DNS", "b.example"),
        ),
    }
    found = certificate_from_ssl(fields, None)
    assert found == PeerCertificate(("urn:asap:agent:a",), ("a.example", "b.example"), "first")
    assert certificate_from_ssl({}, None) is None
    assert certificate_from_ssl(None, None) is None
    assert certificate_from_ssl({"subject": "odd", "subjectAltName": (("DNS",),)}, None) == (
        PeerCertificate()
    )


def test_system_roots_follow_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What grpcs:// trusts by default is what ssl.create_default_context() trusts."""
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert tls.system_roots() == bundle.read_bytes()
    assert ClientTLS().trusted_roots() == bundle.read_bytes()
    assert ClientTLS(root_certificates=b"mine").trusted_roots() == b"mine"


def test_the_roots_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(10):
        bundle = tmp_path / f"roots-{index}.pem"
        bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        tls.system_roots()
    assert tls._read_roots.cache_info().currsize <= 4


def test_a_ca_directory_is_read_when_there_is_no_file(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----")
    (tmp_path / "notes.txt").write_bytes(b"not a certificate")
    (tmp_path / "sub").mkdir()
    roots = tls._read_roots(None, str(tmp_path))
    assert roots == b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"
    assert tls._read_roots(None, str(tmp_path / "missing")) is None


def test_reload_may_not_turn_client_certificates_on_or_off() -> None:
    plain = ServerTLS(b"c", b"k")
    mutual = ServerTLS(b"c", b"k", client_ca=b"ca")
    with pytest.raises(ValueError, match="client_ca"):
        plain.check_reload(mutual)
    with pytest.raises(ValueError, match="client_ca"):
        mutual.check_reload(plain)
    with pytest.raises(ValueError, match="does not load"):
        plain.check_reload(ServerTLS(b"not a certificate", b"not a key"))
