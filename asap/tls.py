"""TLS settings shared by both transports (PEM bytes in, transport-specific credentials out)."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's certificate and key; with ``client_ca`` it requires client certificates (mTLS)."""

    cert_chain: bytes
    """PEM certificate chain."""
    private_key: bytes
    """PEM private key."""
    client_ca: bytes | None = None
    """PEM CA bundle that client certificates must chain to; None means no client certificates."""

    def ssl_context(self) -> ssl.SSLContext:
        """Build an ``ssl.SSLContext`` for servers that take one (the WebSocket bridge)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert_chain, self.private_key)
        if self.client_ca is not None:
            context.load_verify_locations(cadata=self.client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context


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
        """Build an ``ssl.SSLContext`` for clients that take one (the WebSocket bridge)."""
        context = ssl.create_default_context()
        if self.root_certificates is not None:
            context.load_verify_locations(cadata=self.root_certificates.decode())
        if self.cert_chain is not None and self.private_key is not None:
            _load_chain(context, self.cert_chain, self.private_key)
        return context


def _load_chain(context: ssl.SSLContext, cert_chain: bytes, private_key: bytes) -> None:
    """Load a PEM chain and key from memory (ssl only reads files, so use a private temp dir)."""
    import tempfile
    from pathlib import Path

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
