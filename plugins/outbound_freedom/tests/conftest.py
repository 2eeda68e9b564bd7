from __future__ import annotations

from collections.abc import Iterator

import pytest
from tunray.testing.netns import Topology


@pytest.fixture
def loopback_echo(echo_server: int) -> Iterator[int]:
    """An echo server on loopback (no root needed); yields its base port."""
    yield echo_server


@pytest.fixture
def topo(netns_topology: Topology) -> Iterator[Topology]:
    yield netns_topology
