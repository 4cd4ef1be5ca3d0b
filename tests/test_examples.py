"""Every example in examples/ runs to completion and shows what its docstring promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    """Run one example in a subprocess and return its standard output."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and file
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_coordinator_streams_worker_progress() -> None:
    """The coordinator relays each worker update in order, then the worker's result."""
    lines = run_example("coordinator_worker.py").splitlines()
    progress = [line for line in lines if line.startswith("progress")]
    assert [line.split()[1] for line in progress] == ["33.3%", "66.7%", "100.0%"]
    assert all("worker:" in line for line in progress)
    assert lines[-1].startswith("result:")
    assert "tide pools" in lines[-1]


@pytest.mark.slow
def test_bearer_auth_outcomes_match_on_both_transports() -> None:
    """No token, wrong token, wrong sender and the right one give the same outcomes on both transports."""
    output = run_example("bearer_auth.py")
    blocks = [block for block in output.split("\n") if "->" in block]
    outcomes = [line.split("->", 1)[1].strip() for line in blocks]
    expected = [
        "Unauthenticated UNAUTHENTICATED (MISSING_CREDENTIALS)",
        "Unauthenticated UNAUTHENTICATED (INVALID_TOKEN)",
        "SenderMismatch PERMISSION_DENIED (SENDER_MISMATCH)",
    ]
    assert len(outcomes) == 8
    for half in (outcomes[:4], outcomes[4:]):
        assert half[:3] == expected
        assert half[3].startswith("ok:")


@pytest.mark.slow
def test_client_survives_server_restart_without_duplicates() -> None:
    """All 30 sends are answered across a killed and restarted server process, each processed once."""
    output = run_example("survive_restart.py")
    assert "answered 30 of 30, processed 30 envelopes, 0 twice" in output
    assert "a retransmission after the restart was answered from Redis: True" in output


@pytest.mark.slow
def test_observability_prints_one_trace_and_metrics() -> None:
    """The two-agent call is one trace of four spans, each a child of the one before; metrics show it."""
    lines = run_example("observability.py").splitlines()
    assert "answer: tracing has been observed" in lines
    summary = next(line for line in lines if line.startswith("trace: "))
    assert summary.startswith("trace: 4 spans in 1 trace ")
    trace_id = summary.rsplit(" ", 1)[1]
    assert f"answer envelope trace_id {trace_id}" in lines
    assert f"front → back envelope trace_id {trace_id}" in lines
    tree = [line for line in lines if "asap.v1.AgentService/" in line]
    assert [line.split()[0] for line in tree] == ["CLIENT", "SERVER", "CLIENT", "SERVER"]
    indents = [len(line) - len(line.lstrip()) for line in tree]
    assert indents == sorted(indents)
    assert len(set(indents)) == 4
    assert any("[grpc]" in line for line in tree)
    assert any("[ws]" in line for line in tree)
    access = [line for line in lines if line.startswith("asap.access ")]
    assert len(access) == 2
    handled = [line for line in lines if line.strip().startswith("asap_server_handled_total{")]
    assert any('method="Send"' in line and 'transport="grpc"' in line for line in handled)
    assert any('method="Send"' in line and 'transport="ws"' in line for line in handled)


@pytest.mark.slow
def test_demo_prints_the_same_outcomes_for_both_transports() -> None:
    """`make demo` (python -m asap.demo) runs every call shape on both transports with equal outcomes."""
    result = subprocess.run(
        [sys.executable, "-m", "asap.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    grpc_rows = [
        line.split(None, 1)[1].rsplit(" [", 1)[0] for line in lines if line.startswith("  gRPC ")
    ]
    ws_rows = [
        line.split(None, 2)[2].rsplit(" [", 1)[0]
        for line in lines
        if line.startswith("  WebSocket bridge ")
    ]
    assert len(grpc_rows) == 9
    assert grpc_rows == ws_rows
    assert not any("unexpected" in row for row in grpc_rows)
