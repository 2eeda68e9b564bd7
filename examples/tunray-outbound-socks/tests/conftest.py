from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # socks_server.py, without making tests a package


@pytest.fixture
def echo_port() -> Iterator[int]:
    """tunray's echo servers on loopback (ports P..P+3); yields P."""
    port = random.randrange(10000, 32000, 4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunray.testing.echo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert b"ready" in proc.stdout.readline(), proc.stderr.read() if proc.stderr else b""
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
