from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A :mod:`tunray.testing.echo` server on loopback (IPv4 and IPv6); yields its base port."""
    for _attempt in range(5):
        # below the ephemeral range, so servers' outgoing sockets do not collide with it
        port = random.randrange(20000, 32000, 4)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunray.testing.echo", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        if b"ready" in proc.stdout.readline():
            break
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    else:
        raise RuntimeError("could not start the echo server")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
