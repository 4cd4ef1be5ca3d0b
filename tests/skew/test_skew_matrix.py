"""Old client x new server and new client x old server, over grpc, ws-proto and ws-json.

"Old" is the current schema, "new" the next one (``_next_schema.py``: a new field, new enum values,
a new payload kind, a new detail type). Each row of :data:`EXPECTED` says what survives, what is
refused and with which code; it is the table in docs/semantics.md ("Schema skew"). Where a
transport differs the row says so explicitly (:data:`JSON` overrides). No case may turn a server's
real error into MALFORMED_FRAME.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.skew.conftest import Peer


pytestmark = pytest.mark.slow

QUOTA_URL = "type.googleapis.com/asap.v1.QuotaDetail"
NEW_SCHEMA = "1.2.0"
KEPT = "(unknown field kept)"


@dataclass(frozen=True)
class Transport:
    """How the client peer reaches the server peer."""

    id: str
    listener: str
    subprotocol: str | None


TRANSPORTS = (
    Transport("grpc", "grpc", None),
    Transport("ws-proto", "ws", "asap.v1.proto"),
    Transport("ws-json", "ws", "asap.v1.json"),
)


def _not_found(resolved: str) -> dict[str, object]:
    return {
        "error": "NotFound",
        "code": "NOT_FOUND",
        "reason": "NOT_FOUND",
        "metadata": {"task_id": "t-1"},
        "details": [QUOTA_URL],
        "resolved": [resolved],
    }


OLD_SCHEMA = "OLD"  # replaced by the old peer's own schema version at run time

EXPECTED: dict[tuple[str, str], dict[str, object]] = {
    # old client x new server
    ("old→new", "baseline"): {"parts": ["hi", "from the server"]},
    ("old→new", "new_field"): {"echoed": None, "added": KEPT},
    ("old→new", "new_enum"): {"status": 7, "role": 4},
    ("old→new", "new_detail"): _not_found("Any"),
    ("old→new", "newer_major"): {
        "error": "UnsupportedVersion",
        "code": "UNIMPLEMENTED",
        "reason": "UNSUPPORTED_VERSION",
        "metadata": {"asap_version": "2.0", "supported": "1"},
        "details": [],
        "resolved": [],
    },
    ("old→new", "manifest"): {
        "schema_version": NEW_SCHEMA,
        "asap_version": "1.2",
        "task_archive_known": True,
        "task_archive_handled": True,
    },
    # new client x old server
    ("new→old", "baseline"): {"parts": ["hi", "from the server"]},
    ("new→old", "new_field"): {"echoed": "fr", "added": None},
    ("new→old", "new_enum"): {"status": 7, "role": 4},
    ("new→old", "new_detail"): _not_found("QuotaDetail"),
    ("new→old", "new_payload"): {
        "error": "UnknownPayload",
        "code": "UNIMPLEMENTED",
        "reason": "UNKNOWN_PAYLOAD",
        "metadata": {"schema_version": OLD_SCHEMA},
        "details": [],
        "resolved": [],
    },
    ("new→old", "new_payload_checked"): {
        "error": "UnknownPayload",
        "code": "UNIMPLEMENTED",
        "reason": "UNKNOWN_PAYLOAD",
        "metadata": {"payload": "task_archive", "schema_version": OLD_SCHEMA},
        "details": [],
        "resolved": [],
    },
    ("new→old", "newer_major"): {
        "error": "UnsupportedVersion",
        "code": "UNIMPLEMENTED",
        "reason": "UNSUPPORTED_VERSION",
        "metadata": {"asap_version": "2.0", "supported": "1"},
        "details": [],
        "resolved": [],
    },
    ("new→old", "manifest"): {
        "schema_version": OLD_SCHEMA,
        "asap_version": "OLD_PROTOCOL",
        "task_archive_known": False,
        "task_archive_handled": False,
    },
}
"""What the client observes, per (direction, case), on grpc and ws-proto."""

JSON: dict[tuple[str, str], dict[str, object]] = {
    # A JSON reader cannot keep a field it does not know: the old client drops `language`.
    ("old→new", "new_field"): {"echoed": None, "added": None},
    # The new server writes QuotaDetail as JSON members; the old client keeps them as OpaqueAny.
    ("old→new", "new_detail"): _not_found("OpaqueAny"),
    # The old server's JSON reader drops `language` from the request before echoing it.
    ("new→old", "new_field"): {"echoed": None, "added": None},
}
"""Where ws-json differs from :data:`EXPECTED`."""


def _expected(direction: str, case: str, transport: Transport, old: Peer) -> dict[str, object]:
    expected = dict(EXPECTED[(direction, case)])
    if transport.id == "ws-json":
        expected = dict(JSON.get((direction, case), expected))
    metadata = expected.get("metadata")
    if isinstance(metadata, dict) and metadata.get("schema_version") == OLD_SCHEMA:
        expected["metadata"] = {**metadata, "schema_version": old.schema}
    if expected.get("schema_version") == OLD_SCHEMA:
        major, minor, _ = old.schema.split(".")
        expected |= {"schema_version": old.schema, "asap_version": f"{major}.{minor}"}
    return expected


@pytest.mark.parametrize("transport", TRANSPORTS, ids=[t.id for t in TRANSPORTS])
@pytest.mark.parametrize(
    ("direction", "case"), list(EXPECTED), ids=[f"{d}:{c}" for d, c in EXPECTED]
)
def test_skew(peers: dict[str, Peer], direction: str, case: str, transport: Transport) -> None:
    """The client peer runs the case against the server peer; the outcome is the table's."""
    client_name, server_name = direction.split("→")
    client, server = peers[client_name], peers[server_name]
    observed = client.run(case, server.urls[transport.listener], transport.subprotocol)
    assert observed.get("reason") != "MALFORMED_FRAME"
    assert observed == _expected(direction, case, transport, peers["old"])


def test_the_peers_run_the_schemas_they_should(peers: dict[str, Peer]) -> None:
    """The new peer really runs the next schema, the old one the current schema."""
    from asap import schema

    assert peers["new"].schema == NEW_SCHEMA
    assert peers["old"].schema == schema.schema_version() != NEW_SCHEMA
