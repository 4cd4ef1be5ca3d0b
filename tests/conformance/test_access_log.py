"""The access log writes one structured line per call, the same on every transport, never a token."""

from __future__ import annotations

import logging

import pytest

from asap import BearerAuth, errors
from asap.core.access_log import ACCESS_LOGGER
from tests.conformance._service import GOOD_TOKEN, TESTER, HarnessFactory, envelope


pytestmark = pytest.mark.asyncio

SECRET_TOKEN = "s3cr3t-token-value"
"""A token the server accepts; it must appear in no log record."""


def _records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record.__dict__["asap"] for record in caplog.records if record.name == ACCESS_LOGGER]


async def test_one_line_per_call_with_its_outcome(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each call is one line: method, code, duration, peer, principal and bytes."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    auth = BearerAuth.static({GOOD_TOKEN: TESTER, SECRET_TOKEN: TESTER})
    harness = await make_harness(auth=auth, access_log=True, token=SECRET_TOKEN)
    await harness.client.send(envelope("echo", {"text": "hi"}))
    with pytest.raises(errors.NotFound):
        await harness.client.send(envelope("raise", {"class": "NotFound"}))
    anonymous = harness.connect()
    with pytest.raises(errors.Unauthenticated):
        await anonymous.send(envelope("echo"))
    wrong = harness.connect(token=f"{SECRET_TOKEN}-but-wrong")
    with pytest.raises(errors.Unauthenticated):
        await wrong.send(envelope("echo"))
    lines = _records(caplog)
    assert [(line["method"], line["code"], line["principal"]) for line in lines] == [
        ("Send", "OK", TESTER),
        ("Send", "NOT_FOUND", TESTER),
        ("Send", "UNAUTHENTICATED", ""),
        ("Send", "UNAUTHENTICATED", ""),
    ]
    first = lines[0]
    assert set(first) == {
        "method",
        "transport",
        "code",
        "duration_ms",
        "peer",
        "principal",
        "bytes_in",
        "bytes_out",
    }
    assert isinstance(first["duration_ms"], float)
    assert str(first["peer"]).startswith("ipv4:127.0.0.1:")
    assert isinstance(first["bytes_in"], int)
    assert first["bytes_in"] > 0
    assert isinstance(first["bytes_out"], int)
    assert first["bytes_out"] > 0
    assert lines[2]["bytes_in"] == 0
    assert len({line["transport"] for line in lines}) == 1
    for record in caplog.records:
        assert SECRET_TOKEN not in record.getMessage()
        assert SECRET_TOKEN not in repr(record.__dict__)


async def test_off_by_default(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Without access_log the server writes no access line."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    harness = await make_harness()
    await harness.client.send(envelope("echo"))
    assert _records(caplog) == []
