"""Send throughput with the Redis store vs in memory, and ``--workers 2`` vs 1 (``bench.py --stores``).

Each configuration is the real CLI (``asap serve --grpc 127.0.0.1:PORT``, rate limits off) in a
subprocess: in-memory store with 1 worker, Redis store with 1 worker, Redis store with 2 workers
(SO_REUSEPORT). A local ``redis-server`` is started on a free port. The load is ``CLIENTS``
separate gRPC connections (so the kernel spreads them over workers) with ``IN_FLIGHT`` Sends each,
``CALLS`` Sends in all (the example agent's echo skill, 1 KiB input), after a warm-up; the result is
calls per second of wall time, the median of ``ROUNDS``. The client runs in this process, so on a
2-core machine it competes with the servers: the workers ratio is a lower bound.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from asap import connect, task_envelope


ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 8
IN_FLIGHT = 8
CALLS = 4000
WARMUP = 400
ROUNDS = 3
SENDER = "urn:asap:agent:bench"
AGENT = "urn:asap:agent:example"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        message = "redis-server is not installed (scripts/ensure_redis.sh installs it as root)"
        raise SystemExit(message)
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603 - a fixed argument list
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None  # noqa: S101 - PIPE was asked for
    for line in process.stdout:
        if b"Ready to accept connections" in line:
            return process, f"redis://127.0.0.1:{port}/0"
    message = "redis-server did not start"
    raise SystemExit(message)


def _serve(port: int, store: str | None, workers: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "asap.cli", "serve", "--grpc", f"127.0.0.1:{port}"]
    command += ["--rate-limit", "0", "--grace", "1"]
    if store:
        command += ["--store", store, "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # noqa: S603
    assert process.stdout is not None  # noqa: S101 - PIPE was asked for
    ready = "workers " if workers > 1 else "listening "
    for line in process.stdout:
        if line.startswith(ready):
            return process
    message = f"asap serve did not start: {command}"
    raise SystemExit(message)


async def _load(url: str, calls: int) -> float:
    """Send ``calls`` echo tasks over CLIENTS connections; return calls per second."""
    clients = [connect(url, sender=SENDER, timeout=30.0) for _ in range(CLIENTS)]
    text = "x" * 1024
    remaining = [calls]

    async def worker(index: int) -> None:
        client = clients[index % CLIENTS]
        while remaining[0] > 0:
            remaining[0] -= 1
            await client.send(task_envelope(AGENT, "echo", {"text": text}))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(CLIENTS * IN_FLIGHT)))
        return calls / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.close()


def measure(store: str | None, workers: int) -> float:
    """Median calls/s of ROUNDS rounds against a fresh server."""
    port = _free_port()
    server = _serve(port, store, workers)
    try:
        url = f"grpc://127.0.0.1:{port}"
        asyncio.run(_load(url, WARMUP))
        return statistics.median(asyncio.run(_load(url, CALLS)) for _ in range(ROUNDS))
    finally:
        server.terminate()
        server.wait(30)
        if server.stdout is not None:
            server.stdout.close()


def main(argv: Sequence[str] = ()) -> dict[str, float]:
    """Measure the three configurations, print a table with the ratios, return the numbers."""
    redis, url = _redis()
    try:
        results = {
            "memory, 1 worker": measure(None, 1),
            "redis, 1 worker": measure(url, 1),
            "redis, 2 workers": measure(url, 2),
        }
    finally:
        redis.kill()
        redis.wait(30)
        if redis.stdout is not None:
            redis.stdout.close()
    print(f"\nSend throughput (calls/s, {CLIENTS}x{IN_FLIGHT} in flight, median of {ROUNDS})")
    print("| configuration | calls/s |")
    print("| --- | ---: |")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} |")
    redis_vs_memory = results["redis, 1 worker"] / results["memory, 1 worker"]
    workers_ratio = results["redis, 2 workers"] / results["redis, 1 worker"]
    print(f"\nRedis store / in-memory store (1 worker): {redis_vs_memory:.2f}")
    print(f"--workers 2 / --workers 1 (Redis store): {workers_ratio:.2f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
