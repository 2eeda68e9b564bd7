from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transport_std_peers import SingBox, make_cert, start_sing_box


def _start_echo() -> tuple[subprocess.Popen[bytes], int]:
    """Start the echo server on a random base port, retrying when a port is taken."""
    for _ in range(8):
        port = random.randrange(10000, 32000, 4)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunray.testing.echo", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        if b"ready" in proc.stdout.readline():
            return proc, port
        _stop(proc)
    raise RuntimeError("could not start the echo server on any port")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A :mod:`tunray.testing.echo` server on loopback; yields its base port."""
    proc, port = _start_echo()
    try:
        yield port
    finally:
        _stop(proc)


@pytest.fixture
def sing_box(tmp_path: Path) -> Iterator[SingBox]:
    """A sing-box VLESS server with one inbound per transport (ws, ws+ed, httpupgrade, grpc)."""
    box = start_sing_box(tmp_path)
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
def sing_box_tls(tmp_path: Path) -> Iterator[tuple[SingBox, Path]]:
    """The same inbounds behind TLS (self-signed for ``tls.test``); yields (box, CA file)."""
    cert, key = make_cert(tmp_path)
    box = start_sing_box(tmp_path, tls=(cert, key))
    try:
        yield box, cert
    finally:
        box.stop()
