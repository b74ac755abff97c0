"""emu's agnhost netexec (emu.node.workloads.netexec) run as a real process on
this host: on SIGTERM it exits 0, as agnhost netexec does; with --delay-shutdown
it first serves on for that many seconds, its /readyz answering 503 "shutting
down" meanwhile (agnhost's: out of endpoints, yet healthy)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from emu.node.workloads import netexec
from tests.waiting import wait_for

SCRIPT = Path(netexec.__file__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET path, or (0, why) when nothing answers."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError as error:
        return 0, str(error)


@pytest.fixture()
def start(tmp_path):
    started: list[subprocess.Popen] = []

    def run(*flags: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        log = open(tmp_path / f"netexec-{port}.log", "w+")
        argv = [sys.executable, str(SCRIPT), f"--http-port={port}", "--udp-port=0", *flags]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": "web"})
        process.log = log
        started.append(process)
        wait_for(lambda: get(port, "/readyz") == (200, "ok"), 30, "netexec answering")
        return process, port

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.log.close()


def test_sigterm_without_delay_exits_0_at_once(start):
    process, _ = start()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_delay_shutdown_serves_on_after_sigterm_then_exits_0(start):
    process, port = start("--delay-shutdown=600")
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: get(port, "/readyz") == (503, "shutting down"), 30, "/readyz saying it shuts down")
    assert get(port, "/hostname") == (200, "web") and get(port, "/healthz") == (200, "ok")
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)  # a second SIGTERM changes nothing
    assert get(port, "/hostname") == (200, "web") and process.poll() is None
    process.log.seek(0)
    assert "SIGTERM: sleeping 600 seconds before terminating" in process.log.read()

    short, _ = start("--delay-shutdown=1")
    short.send_signal(signal.SIGTERM)
    assert short.wait(timeout=30) == 0


def test_delay_shutdown_must_not_be_negative(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--delay-shutdown=-1"], capture_output=True, text=True)
    assert result.returncode == 2 and "--delay-shutdown must be 0 or more seconds, not -1" in result.stderr
