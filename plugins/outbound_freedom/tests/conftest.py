from __future__ import annotations

from collections.abc import Iterator

import pytest
from tunray.testing.echo import local_echo
from tunray.testing.netns import Topology


@pytest.fixture
def loopback_echo() -> Iterator[int]:
    """An echo server on loopback (no root needed); yields its base port."""
    with local_echo() as port:
        yield port


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology.create()
    try:
        yield t
    finally:
        t.remove()
