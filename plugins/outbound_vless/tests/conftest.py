from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def echo_port(echo_server: int) -> Iterator[int]:
    """tunray's echo servers on loopback (ports P..P+3), from the test kit; yields P."""
    yield echo_server
