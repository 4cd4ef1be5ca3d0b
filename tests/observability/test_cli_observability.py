"""`asap serve --metrics HOST:PORT --access-log`, run as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


ASAP = [sys.executable, "-m", "asap.cli"]


@pytest.mark.slow
def test_serve_with_metrics_port_and_access_log() -> None:
    """A gRPC-only server serves /metrics on its own port and logs each call, never the token."""
    token = "cli-s3cret"
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            *ASAP,
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--access-log",
            "--token",
            token,
            "--grace",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        listening = process.stdout.readline().split()
        metrics = process.stdout.readline().split()
        assert listening[0] == "listening", process.stderr.read() if process.stderr else ""
        assert metrics[0] == "metrics"
        sent = subprocess.run(  # noqa: S603 - our own interpreter and module
            [*ASAP, "send", listening[1], "--skill", "echo", "--token", token],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        with urllib.request.urlopen(metrics[1], timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        handled = {
            labels: count
            for (name, labels), count in samples.items()
            if name == "asap_server_handled_total"
        }
        assert handled == {
            (("code", "OK"), ("method", "GetManifest"), ("transport", "grpc")): 1.0,
            (("code", "OK"), ("method", "Send"), ("transport", "grpc")): 1.0,
        }
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    access = [line for line in stderr.splitlines() if line.startswith("INFO asap.access")]
    assert len(access) == 2
    assert '"method": "Send"' in access[1]
    assert token not in stderr
