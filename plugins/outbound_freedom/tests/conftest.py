from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from tunray.testing.netns import Topology


@pytest.fixture
def loopback_echo() -> Iterator[int]:
    """An echo server on loopback (no root needed); yields its base port."""
    port = random.randrange(20000, 60000, 4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunray.testing.echo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"ready" in line, proc.stderr.read() if proc.stderr else b""
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology.create()
    try:
        yield t
    finally:
        t.remove()
