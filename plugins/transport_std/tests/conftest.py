from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transport_std_peers import SingBox, make_cert, start_sing_box


@pytest.fixture
def echo_port(echo_server: int) -> Iterator[int]:
    """tunray's echo servers on loopback (ports P..P+3), from the test kit; yields P."""
    yield echo_server


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
