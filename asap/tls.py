"""TLS settings shared by both transports (PEM bytes in, transport-specific credentials out)."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """A client certificate the TLS handshake verified, as both transports report it."""

    uris: tuple[str, ...] = ()
    """The URI subject alternative names, in certificate order."""
    dns_names: tuple[str, ...] = ()
    """The DNS subject alternative names, in certificate order."""
    common_name: str | None = None
    """The subject's common name (CN), if any."""
    pem: bytes = b""
    """The certificate itself (PEM), for mappings that need more than the names."""


CertificateIdentity: TypeAlias = Callable[[PeerCertificate], str | None]
"""Maps a verified client certificate to the subject of ``CallContext.identity`` (None: anonymous)."""


def default_certificate_identity(certificate: PeerCertificate) -> str | None:
    """The first URI SAN (``urn:asap:agent:...`` or a SPIFFE id), else the first DNS SAN, else the CN."""
    if certificate.uris:
        return certificate.uris[0]
    if certificate.dns_names:
        return certificate.dns_names[0]
    return certificate.common_name or None


def certificate_from_ssl(
    fields: Mapping[str, object] | None, der: bytes | None
) -> PeerCertificate | None:
    """The certificate :meth:`ssl.SSLObject.getpeercert` reported (its dict and its DER bytes)."""
    if not fields:
        return None
    names: dict[object, list[str]] = {"URI": [], "DNS": []}
    for kind, value, *_ in _pairs(fields.get("subjectAltName")):
        if kind in names and isinstance(value, str):
            names[kind].append(value)
    common_name = None
    subject = fields.get("subject")
    for rdn in subject if isinstance(subject, tuple) else ():  # ((("commonName", "x"),), ...)
        for key, value, *_ in _pairs(rdn):
            if key == "commonName" and isinstance(value, str) and common_name is None:
                common_name = value
    pem = ssl.DER_cert_to_PEM_cert(der).encode() if der else b""
    return PeerCertificate(tuple(names["URI"]), tuple(names["DNS"]), common_name, pem)


def _pairs(value: object) -> list[tuple[object, ...]]:
    """The tuples of two or more items inside a tuple (getpeercert's nested shapes)."""
    if not isinstance(value, tuple):
        return []
    return [item for item in value if isinstance(item, tuple) and len(item) >= 2]


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's certificate and key; with ``client_ca`` it requires client certificates (mTLS).

    With ``client_ca``, each call's ``CallContext.identity`` is the subject ``client_identity``
    maps the verified client certificate to, on both transports (see docs/security.md).
    """

    cert_chain: bytes
    """PEM certificate chain."""
    private_key: bytes
    """PEM private key."""
    client_ca: bytes | None = None
    """PEM CA bundle that client certificates must chain to; None means no client certificates."""
    client_identity: CertificateIdentity = field(
        default=default_certificate_identity, compare=False
    )
    """Maps a client certificate to the caller's identity (default: first URI SAN, DNS SAN, CN)."""

    def ssl_context(self) -> ssl.SSLContext:
        """Build an ``ssl.SSLContext`` for servers that take one (the WebSocket bridge)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert_chain, self.private_key)
        if self.client_ca is not None:
            context.load_verify_locations(cadata=self.client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def check_reload(self, new: ServerTLS) -> ssl.SSLContext:
        """Check that ``new`` can replace this one, and return its ``ssl.SSLContext``.

        Building the context parses the certificate, key and CA bundle, so a reload that cannot
        work fails here, before any listener changes.

        Raises:
            ValueError: ``new`` requires client certificates and this does not, or the reverse
                (a restart does that); or its certificate, key or CA bundle do not load.
        """
        if (self.client_ca is None) != (new.client_ca is None):
            message = "reload_tls cannot turn client certificates (client_ca) on or off"
            raise ValueError(message)
        try:
            return new.ssl_context()
        except (ssl.SSLError, ValueError) as error:
            message = f"the new certificate, key or client CA does not load: {error}"
            raise ValueError(message) from None


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What a client trusts and, for mTLS, the certificate it presents."""

    root_certificates: bytes | None = None
    """PEM CA bundle to trust; None means the system's default trust store."""
    cert_chain: bytes | None = None
    """PEM client certificate chain, for mTLS."""
    private_key: bytes | None = None
    """PEM client private key, for mTLS."""

    def ssl_context(self) -> ssl.SSLContext:
        """Build an ``ssl.SSLContext`` for clients that take one (the WebSocket bridge).

        It trusts exactly what :meth:`trusted_roots` gives gRPC: ``root_certificates`` when set
        (only them), else the system trust store.
        """
        if self.root_certificates is not None:
            context = ssl.create_default_context(cadata=self.root_certificates.decode())
        else:
            context = ssl.create_default_context()
        if self.cert_chain is not None and self.private_key is not None:
            _load_chain(context, self.cert_chain, self.private_key)
        return context

    def trusted_roots(self) -> bytes | None:
        """The PEM roots a gRPC channel trusts: ``root_certificates``, else the system store.

        grpc would otherwise use the roots bundled with it, so a private or corporate CA in the
        system store would work over ``wss://`` (which uses that store) and not over ``grpcs://``.
        None when the system store cannot be read as PEM (grpc's bundled roots are used then).
        """
        if self.root_certificates is not None:
            return self.root_certificates
        return system_roots()


def system_roots() -> bytes | None:
    """The system trust store as one PEM bundle: what ``ssl.create_default_context()`` trusts.

    Read from OpenSSL's default CA file (``$SSL_CERT_FILE`` if set), else the certificates in its
    default CA directory (``$SSL_CERT_DIR``).
    """
    paths = ssl.get_default_verify_paths()
    return _read_roots(paths.cafile, paths.capath)


@functools.lru_cache(maxsize=4)
def _read_roots(cafile: str | None, capath: str | None) -> bytes | None:
    """Read once per location (every grpcs:// channel needs them; a few locations at most)."""
    if cafile is not None:
        try:
            return Path(cafile).read_bytes()
        except OSError:
            pass
    if capath is not None:
        bundle = bytearray()
        try:
            entries = sorted(Path(capath).iterdir())
        except OSError:
            return None
        for entry in entries:
            try:
                data = entry.read_bytes() if entry.is_file() else b""
            except OSError:
                continue
            if b"-----BEGIN CERTIFICATE-----" in data:
                bundle += data.rstrip(b"\n") + b"\n"
        return bytes(bundle) or None
    return None


def _load_chain(context: ssl.SSLContext, cert_chain: bytes, private_key: bytes) -> None:
    """Load a PEM chain and key from memory (ssl only reads files, so use a private temp dir)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_chain)
        key.touch(mode=0o600)
        key.write_bytes(private_key)
        context.load_cert_chain(cert, key)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext_allowed(url: str, host: str, *, allow_insecure: bool) -> bool:
    """Refuse plaintext to a host that is not loopback unless explicitly allowed.

    Returns True when the caller should warn (plaintext to loopback, or explicitly allowed).

    Raises:
        InsecureTransportError: plaintext to a remote host without ``allow_insecure``.
    """
    from asap.errors import InsecureTransportError

    if is_loopback(host):
        return True
    if not allow_insecure:
        message = (
            f"refusing plaintext connection to {url}: {host} is not a loopback address; "
            "use grpcs:// or wss://, or pass allow_insecure=True to accept eavesdropping"
        )
        raise InsecureTransportError(message)
    return True
