"""The `asap` command, run as a user would: serve on both transports, send, stream, fail, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest


ASAP = [sys.executable, "-m", "asap.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run one `asap` command to completion."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [*ASAP, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    """`asap serve --grpc … --ws …` in a subprocess; yields {"grpc": url, "ws": url}."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*ASAP, "serve", "--grpc", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--grace", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    urls: dict[str, str] = {}
    while len(urls) < 2:
        line = process.stdout.readline()  # blocks until the server prints a listener
        assert line, f"server exited early: {process.stderr.read() if process.stderr else ''}"
        assert line.startswith("listening ")
        url = line.split()[1]
        urls["grpc" if url.startswith("grpc") else "ws"] = url
    yield urls
    process.send_signal(signal.SIGINT)
    status = process.wait(timeout=30)
    process.stdout.close()
    if process.stderr is not None:
        process.stderr.close()
    assert status == 0


def test_serve_prints_each_listener_with_its_url(served: dict[str, str]) -> None:
    """One `listening` line per transport, the WebSocket one with its path."""
    assert served["grpc"].startswith("grpc://127.0.0.1:")
    assert served["ws"].startswith("ws://127.0.0.1:")
    assert served["ws"].endswith("/asap/v1/ws")


@pytest.mark.parametrize("transport", ["grpc", "ws"])
def test_send_prints_the_answer_as_canonical_json(served: dict[str, str], transport: str) -> None:
    """`asap send --skill echo` prints the SendResponse as proto JSON and exits 0."""
    result = run("send", served[transport], "--skill", "echo", "--input", '{"text": "hi"}')
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["envelope"]["taskResponse"]["result"] == {"text": "hi"}
    assert answer["envelope"]["taskResponse"]["status"] == "TASK_STATUS_COMPLETED"


@pytest.mark.parametrize("transport", ["grpc", "ws"])
def test_send_stream_prints_updates_as_they_arrive(served: dict[str, str], transport: str) -> None:
    """`--stream` prints every update, then the answer, with progress lines on stderr."""
    result = run(
        "send", served[transport], "--skill", "stream", "--input", '{"steps": 2}', "--stream"
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("[")] == [
        "[1] task_update",
        "[2] task_update",
        "[3] task_response",
    ]


@pytest.mark.parametrize("transport", ["grpc", "ws"])
def test_failure_prints_one_line_and_exits_non_zero(served: dict[str, str], transport: str) -> None:
    """A typed error prints `error: CODE (REASON): message` and exits 1."""
    result = run("send", served[transport], "--skill", "fail", "--input", '{"code": "NOT_FOUND"}')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: NOT_FOUND (NOT_FOUND): failing with NOT_FOUND as asked"
    )


def test_manifest_lists_both_endpoints(served: dict[str, str]) -> None:
    """`asap manifest` prints the manifest, which lists both listeners and the example skills."""
    result = run("manifest", served["ws"])
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert {endpoint["url"] for endpoint in manifest["endpoints"]} == set(served.values())
    assert [skill["id"] for skill in manifest["skills"]] == ["echo", "stream", "fail"]


def test_plaintext_to_a_remote_host_is_refused_before_connecting() -> None:
    """A grpc:// URL to a non-loopback host is refused with a clear message and exit status 2."""
    result = run("manifest", "grpc://example.com:50051")
    assert result.returncode == 2
    assert "refusing plaintext connection" in result.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["send"], ["manifest"]])
def test_every_command_has_help(command: list[str]) -> None:
    """`asap [command] --help` describes the command and exits 0."""
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "usage: asap" in result.stdout


def test_agent_must_be_module_colon_attribute() -> None:
    """An --agent that is not MODULE:ATTR is refused with a message."""
    result = run("serve", "--agent", "not-a-spec", "--grpc", "127.0.0.1:0")
    assert result.returncode != 0
    assert "MODULE:ATTR" in result.stderr


def test_serve_on_uvloop_answers_on_both_transports() -> None:
    """`asap serve --loop uvloop` serves the same calls (asap.loops picks the loop)."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*ASAP, "serve", "--grpc", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--loop", "uvloop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        urls = [process.stdout.readline().split()[1] for _ in range(2)]
        for url in urls:
            result = run("send", url, "--skill", "echo", "--input", '{"text": "uv"}')
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["envelope"]["taskResponse"]["result"] == {"text": "uv"}
    finally:
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=30)
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
    assert status == 0


def test_an_unknown_loop_is_a_usage_error() -> None:
    """argparse refuses a loop that is not asyncio or uvloop (exit 2, the choices named)."""
    result = run("serve", "--ws", "127.0.0.1:0", "--loop", "trio")
    assert result.returncode == 2
    assert "uvloop" in result.stderr
