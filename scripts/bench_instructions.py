"""Instructions per call under callgrind, server and client (``bench.py --instructions``).

Wall-clock numbers on a shared VM move by a factor of two between runs (``bench.py`` says when);
the number of instructions a process executes per call does not. For each pair of scenarios
below, each side runs once under ``valgrind --tool=callgrind`` while the other side runs natively:
the server (``_bench_servers.py`` behind the valgrind command) or the client (this script again,
as ``--drive``). Each measured process makes ``WARM_UP`` calls, then ``SHORT`` or ``LONG`` more at
16 in flight; the difference of the two totals over ``LONG - SHORT`` calls is the per-call count,
with start-up, imports and warm-up cancelled out. Every process runs with ``PYTHONHASHSEED=0``:
with a random seed, dicts and sets probe differently in each process, and the start-up of two runs
then differs by more instructions than the calls between them do. valgrind emulates the CPU: it
counts what the code executes, not how fast the machine runs it (instructions the emulated CPU
lacks, such as SHA-NI, are counted as their software fallback, so ``sha256`` weighs more here than
it costs).

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``); takes several minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


# Appended, not inserted first: with ``--compiled`` the PYTHONPATH's compiled tree must come before
# the checkout, or the client measured (this script, ``--drive``) would run the sources.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from scripts import bench  # the scenarios and the server process of bench.py


WARM_UP = 200
SHORT = 200
LONG = 2000
IN_FLIGHT = 16
PAIRS = (("raw-ws", "asap-ws-proto-send"), ("raw-grpc-unary", "asap-grpc-send"))
"""(raw, ASAP) scenario keys of bench.py, measured side by side."""
VALGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
_COLLECTED = re.compile(rb"Collected : (\d+)")


def _collected(text: bytes, what: str) -> int:
    match = _COLLECTED.search(text)
    if match is None:
        message = f"{what}: no instruction count in valgrind's output:\n{text[-2000:].decode()}"
        raise RuntimeError(message)
    return int(match.group(1))


def _scenario(key: str) -> bench.Scenario:
    for scenario in bench.SCENARIOS:
        if scenario.key == key:
            return scenario
    message = f"no scenario {key!r} in bench.py"
    raise KeyError(message)


async def drive(key: str, port: int, calls: int) -> None:
    """The client side: open the scenario's connection, warm up, make ``calls`` calls."""
    driver = await _scenario(key).open(port)
    try:
        await driver.check()
        await driver.run(WARM_UP, IN_FLIGHT)
        await driver.run(calls, IN_FLIGHT)
    finally:
        await driver.close()


def _server_count(key: str, calls: int) -> int:
    """Instructions of the server process over a whole run of ``calls`` calls."""
    scenario = _scenario(key)
    with tempfile.TemporaryFile() as errors:
        server = bench.ServerProcess(
            scenario.server,
            cpus=set(),
            uvloop=False,
            prefix=VALGRIND,
            stderr=errors,
            timeout=300,
            stop_timeout=120,
        )
        try:
            _drive_natively(key, server.value, calls)
        finally:
            server.stop()
        errors.seek(0)
        return _collected(errors.read(), f"{scenario.server} server")


def _drive_natively(key: str, port: int, calls: int) -> None:
    command = [sys.executable, __file__, "--drive", key, str(port), str(calls)]
    subprocess.run(command, check=True, cwd=bench.ROOT)  # noqa: S603 - this script


def _client_count(key: str, calls: int) -> int:
    """Instructions of the client process over a whole run of ``calls`` calls."""
    scenario = _scenario(key)
    server = bench.ServerProcess(scenario.server, cpus=set(), uvloop=False)
    try:
        command = [*VALGRIND, sys.executable, __file__, "--drive", key, str(server.value)]
        done = subprocess.run(  # noqa: S603 - valgrind running this script
            [*command, str(calls)], check=True, cwd=bench.ROOT, capture_output=True
        )
    finally:
        server.stop()
    return _collected(done.stderr, f"{key} client")


def per_call(count: Callable[[str, int], int], key: str) -> float:
    """Instructions per call: the difference of a long and a short run over their difference."""
    return (count(key, LONG) - count(key, SHORT)) / (LONG - SHORT)


def main() -> int:
    """Measure every pair and print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--drive", nargs=3, metavar=("KEY", "PORT", "CALLS"), help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.drive:
        logging.basicConfig(level=logging.ERROR)  # plaintext-to-loopback warnings are expected
        key, port, calls = options.drive
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(drive(key, int(port), int(calls)))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH: install it (Debian: apt-get install valgrind)")
        return 1
    os.environ["PYTHONHASHSEED"] = "0"  # inherited by every process measured (see above)
    print(f"instructions per call, {IN_FLIGHT} in flight, ({LONG} - {SHORT}) calls after {WARM_UP}")
    rows = []
    for raw, asap in PAIRS:
        counts = {}
        for key in (raw, asap):
            counts[key] = (per_call(_server_count, key), per_call(_client_count, key))
            print(
                f"  {key}: server {counts[key][0]:,.0f}, client {counts[key][1]:,.0f}", flush=True
            )
        rows.append((raw, asap, counts))
    print()
    print("| scenario | server instructions per call | client instructions per call |")
    print("|---|---|---|")
    for raw, asap, counts in rows:
        for key in (raw, asap):
            server, client = counts[key]
            print(f"| {_scenario(key).label} | {server:,.0f} | {client:,.0f} |")
        (raw_server, raw_client), (server, client) = counts[raw], counts[asap]
        print(f"| ASAP / raw | {server / raw_server:.2f} x | {client / raw_client:.2f} x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
