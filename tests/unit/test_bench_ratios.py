"""scripts/bench.py judges each target at the in-flight level it is set at."""

from __future__ import annotations

from typing import Any

from scripts import bench


def _scenario(p50_us: float, **calls_per_s: float) -> dict[str, Any]:
    return {
        "latency": {"p50_us": p50_us},
        "throughput": {level[1:]: {"calls_per_s": rate} for level, rate in calls_per_s.items()},
    }


def _row(rows: list[dict[str, Any]], asap: str) -> dict[str, Any]:
    (row,) = (row for row in rows if row["asap"] == asap)
    return row


def test_a_target_at_16_in_flight_ignores_the_other_levels() -> None:
    """Issue 12's targets are at 16 in flight: a low ratio at 64 does not fail them, one at 16 does."""
    medians = {
        "raw-ws": _scenario(100.0, x1=1000.0, x16=10_000.0, x64=20_000.0),
        "asap-ws-proto-send": _scenario(140.0, x1=500.0, x16=6_000.0, x64=9_000.0),
        "asap-ws-stream": _scenario(200.0, x1=900.0, x16=5_900.0, x64=19_000.0),
    }
    rows = bench.ratios(medians)
    send = _row(rows, "asap-ws-proto-send")
    assert send["target_at"] == 16
    assert send["throughput_ratio"]["64"] == 0.45
    assert send["met"]
    stream = _row(rows, "asap-ws-stream")
    assert not stream["throughput_met"]  # 0.59 at 16, whatever it does at 64


def test_a_target_without_a_level_holds_at_every_level() -> None:
    """Observability's on/off targets (issue 13) name no level: every level must meet them."""
    medians = {
        "asap-ws-proto-send": _scenario(100.0, x1=1000.0, x16=10_000.0, x64=10_000.0),
        "asap-ws-proto-send-metrics": _scenario(100.0, x1=950.0, x16=9_500.0, x64=8_000.0),
    }
    row = _row(bench.ratios(medians), "asap-ws-proto-send-metrics")
    assert row["target_at"] is None
    assert not row["met"]  # 0.8 at 64 under its 0.9
