from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # socks_server.py, without making tests a package


@pytest.fixture
def echo_port(echo_server: int) -> Iterator[int]:
    """tunray's echo servers on loopback (ports P..P+3), from the test kit; yields P."""
    yield echo_server
