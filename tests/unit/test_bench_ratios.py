"""scripts/bench.py: each target judged at its in-flight level; scenarios measured interleaved."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, cast

import pytest

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


def test_split_cuts_calls_into_nearly_equal_slices() -> None:
    """Every call is in one slice, slices differ by one call at most, none is empty."""
    assert bench.split(8000, 4) == [2000, 2000, 2000, 2000]
    assert bench.split(10, 4) == [3, 3, 2, 2]
    assert bench.split(3, 4) == [1, 1, 1]
    assert bench.split(5, 0) == [5]


class _Server(bench.ServerProcess):
    """A server process that is not one: its CPU time is what the test says."""

    def __init__(self) -> None:  # no subprocess
        self.cpu = 0.0

    def stats(self) -> bench.Stats:
        return bench.Stats(self.cpu, 0)


class _Recording(bench.Driver):
    """A driver that records its throughput phases in a log shared with the others."""

    def __init__(self, name: str, log: list[tuple[str, int, int]], server: _Server) -> None:
        self.name = name
        self.log = log
        self.server = server

    async def call(self) -> None:
        self.server.cpu += 0.001

    async def run(self, total: int, in_flight: int) -> None:
        self.log.append((self.name, total, in_flight))
        self.server.cpu += 0.001 * total

    async def close(self) -> None:
        pass


_FOUR_SLICES = bench.Settings(
    rounds=1,
    warmup=2,
    latency_calls=8,
    throughput_calls=10,
    idle_connections=0,
    idle_heartbeat=1.0,
    idle_latency_calls=0,
    slices=4,
)
"""A tiny measurement: 8 latency calls and 10 calls per level, each phase in four slices."""


@pytest.mark.asyncio
async def test_measure_interleaves_the_scenarios_slice_by_slice() -> None:
    """Each level's calls are cut into slices that the scenarios take in turn (reversed every
    other slice); a scenario's numbers add up over its slices."""
    log: list[tuple[str, int, int]] = []
    server = _Server()
    drivers: dict[str, bench.Driver] = {name: _Recording(name, log, server) for name in "ab"}
    settings = _FOUR_SLICES
    results = await bench.measure(drivers, {"a": server, "b": server}, settings)
    assert log[:2] == [("a", 2, 64), ("b", 2, 64)]  # the warm-ups come first
    measured = log[2:]
    at_16 = [(name, total) for name, total, level in measured if level == 16]
    assert at_16 == [("a", 3), ("b", 3), ("b", 3), ("a", 3), ("a", 2), ("b", 2), ("b", 2), ("a", 2)]
    assert {level for _, _, level in measured} == set(bench.IN_FLIGHT)
    for name in "ab":
        result = results[name]
        assert set(result["throughput"]) == {str(level) for level in bench.IN_FLIGHT}
        # 1 ms of server CPU per call, whatever the slices: the sums are over all of them.
        assert result["throughput"]["16"]["server_cpu_us"] == pytest.approx(1000.0)
        assert result["latency"]["server_cpu_us"] == pytest.approx(1000.0)


@pytest.mark.asyncio
async def test_measure_places_the_processes_before_every_slice_and_restores_them() -> None:
    """``place(index)`` runs before each slice of every phase, and ``place(0)`` once at the end."""
    log: list[tuple[str, int, int]] = []
    server = _Server()
    drivers: dict[str, bench.Driver] = {name: _Recording(name, log, server) for name in "ab"}
    settings = _FOUR_SLICES
    placed: list[int] = []
    await bench.measure(drivers, {"a": server, "b": server}, settings, placed.append)
    phases = 1 + len(bench.IN_FLIGHT)  # latency, then one phase per level
    assert placed == [0, 1, 2, 3] * phases + [0]


class _Pid:
    """A ServerProcess stand-in that is only a process id (all CpuSwap needs)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_cpu_swap_trades_the_server_and_client_cpus_every_other_slice() -> None:
    """Odd slices put the servers on the client's CPUs and this process on the servers'; even
    slices put them back. A real subprocess's threads move; with one CPU nothing moves."""
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    child = subprocess.Popen(  # blocks on its stdin until the test closes it
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        if len(cpus) < 2:
            swap = bench.CpuSwap([cast("bench.ServerProcess", _Pid(child.pid))], set(), set())
            swap(1)
            assert os.sched_getaffinity(child.pid) == mine
            return
        server_cpus, client_cpus = {cpus[0]}, {cpus[1]}
        bench.pin(server_cpus, child.pid)
        bench.pin(client_cpus)
        swap = bench.CpuSwap(
            [cast("bench.ServerProcess", _Pid(child.pid))], server_cpus, client_cpus
        )
        swap(0)
        assert os.sched_getaffinity(child.pid) == server_cpus
        assert os.sched_getaffinity(0) == client_cpus
        swap(1)
        assert os.sched_getaffinity(child.pid) == client_cpus
        assert os.sched_getaffinity(0) == server_cpus
        swap(3)
        assert os.sched_getaffinity(child.pid) == client_cpus
        swap(2)
        assert os.sched_getaffinity(child.pid) == server_cpus
        assert os.sched_getaffinity(0) == client_cpus
    finally:
        bench.pin(mine)
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
