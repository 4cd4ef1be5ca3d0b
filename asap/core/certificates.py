"""Client-certificate identities (mTLS): how they meet bearer tokens.

A transport that verified a client certificate puts the identity it maps to in both
``CallContext.identity`` and ``CallContext.tls_identity`` before the call starts, so a server
without ``auth`` authenticates callers by certificate alone. With ``auth`` too, the token is still
required and :class:`CertificateBinding` (right after authentication) refuses a token whose subject
is not the certificate's: one credential never overrides the other.

Senders: a certificate identity that is an agent URN (a URI SAN ``urn:asap:agent:...``) is bound
by default (:class:`CertificateSenderBinding`); one that names a host (a DNS SAN, a CN) could
never match a sender, so it is bound only with ``Server(bind_sender=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from asap.core.context import CallContext, Identity
from asap.core.interceptors import Interceptor
from asap.errors import IdentityMismatch, SenderMismatch
from asap.v1 import envelope_pb2
from asap.validation import is_agent_urn


CREDENTIAL_CLAIM = "credential"
"""The ``Identity.claims`` key saying where an identity came from."""
CLIENT_CERTIFICATE = "client-certificate"
"""The :data:`CREDENTIAL_CLAIM` of an identity taken from a client certificate."""


def certificate_identity(subject: str | None) -> Identity | None:
    """The identity a client certificate's mapped subject stands for (None: anonymous)."""
    if not subject:
        return None
    return Identity(subject, {CREDENTIAL_CLAIM: CLIENT_CERTIFICATE})


class CertificateBinding(Interceptor):
    """Refuse a call whose token names another subject than its client certificate (PERMISSION_DENIED)."""

    eager_safe = True
    """Never suspends: calls may run eagerly through it."""

    async def on_call(self, ctx: CallContext) -> None:
        """Compare the authenticated identity with the certificate's."""
        certificate = ctx.tls_identity
        if certificate is None:
            return
        identity = ctx.identity
        if identity is None:
            ctx.identity = certificate
        elif identity.subject != certificate.subject:
            message = (
                f"the token is for {identity.subject[:128]!r} but the client certificate is "
                f"{certificate.subject[:128]!r}"
            )
            raise IdentityMismatch(message)


class CertificateSenderBinding(Interceptor):
    """Refuse envelopes whose sender is not the caller's certificate identity, when that is a URN.

    The default binding of a server without ``auth`` (SENDER_MISMATCH, PERMISSION_DENIED, as
    :class:`~asap.core.middleware.SenderBinding`).
    """

    eager_safe = True
    """Never suspends: calls may run eagerly through it."""

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Check every sender against the certificate's agent URN."""
        identity = ctx.identity
        if identity is None or identity is not ctx.tls_identity:
            return
        if not is_agent_urn(identity.subject):
            return
        for envelope in envelopes:
            if envelope.sender != identity.subject:
                message = f"sender {envelope.sender!r} is not the caller {identity.subject!r}"
                raise SenderMismatch(message)
