"""Check, before sending, whether an agent's manifest says it can take an envelope.

A newer sender can learn from ``GetManifest`` that the agent is too old for what it is about to
send, and fail locally with the error the agent would answer, instead of a round trip:
:class:`~asap.errors.UnknownPayload` for a payload kind the agent's schema does not know,
:class:`~asap.errors.NoHandler` for one it knows but does not handle, and
:class:`~asap.errors.UnsupportedVersion` for an ``asap_version`` of another major. A manifest from
an agent older than ``Capabilities.payload_kinds`` lists no kinds; nothing is concluded from it then
(the agent answers for itself). See docs/versioning.md.
"""

from __future__ import annotations

from asap import validation
from asap.errors import NoHandler, UnknownPayload, UnsupportedVersion
from asap.v1 import envelope_pb2, manifest_pb2


__all__ = ["check_supported"]


def check_supported(manifest: manifest_pb2.Manifest, envelope: envelope_pb2.Envelope) -> None:
    """Raise the error the manifest's agent would answer ``envelope`` with, if the manifest tells.

    Args:
        manifest: The recipient's manifest (``Client.get_manifest()``).
        envelope: The envelope about to be sent; its payload must be set.

    Raises:
        UnsupportedVersion: The envelope's ``asap_version`` major is not the agent's.
        UnknownPayload: The agent's schema does not know the payload kind.
        NoHandler: The agent's schema knows the kind but no handler takes it.
        asap.errors.InvalidEnvelope: The envelope itself has no payload.
    """
    capabilities = manifest.capabilities
    theirs = capabilities.asap_version.partition(".")[0]
    ours = envelope.asap_version.partition(".")[0]
    if theirs and ours and theirs != ours:
        text = (
            f"agent {manifest.id} speaks ASAP {capabilities.asap_version}; the envelope is "
            f"{envelope.asap_version}"
        )
        raise UnsupportedVersion(
            text, metadata={"asap_version": envelope.asap_version, "supported": theirs}
        )
    kind = validation.payload_kind(envelope)
    version = capabilities.schema_version or "unknown"
    if capabilities.known_payload_kinds and kind not in capabilities.known_payload_kinds:
        text = (
            f"agent {manifest.id} (schema {version}) does not know {kind} envelopes; "
            "it is older than this sender"
        )
        raise UnknownPayload(text, metadata={"payload": kind, "schema_version": version})
    if capabilities.payload_kinds and kind not in capabilities.payload_kinds:
        text = f"agent {manifest.id} has no handler for {kind} envelopes"
        name = validation.PAYLOAD_TYPES[kind].DESCRIPTOR.name
        raise NoHandler(text, metadata={"payload": name})
