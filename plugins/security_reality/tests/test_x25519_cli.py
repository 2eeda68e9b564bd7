"""``tunray x25519`` against ``xray x25519`` (the pinned binary, run as nobody): same format, same keys."""

from __future__ import annotations

import subprocess

import pytest
from tunray.cli import main
from tunray.testing.xray import NOBODY, xray_path


def _xray(*args: str) -> str:
    return subprocess.run([*NOBODY, str(xray_path()), "x25519", *args], capture_output=True, text=True, check=True).stdout


def _tunray(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["x25519", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.root
@pytest.mark.parametrize("private", ["aGSYystUbf59_9_6LKRxD27rmSW_-2_nyd9YG_Gwbks", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_derivation_matches_xray(private: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tunray(capsys, "-i", private) == _xray("-i", private)


@pytest.mark.root
def test_new_key_has_xray_format_and_xray_derives_the_same_public_key(capsys: pytest.CaptureFixture[str]) -> None:
    out = _tunray(capsys)
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [line.split(": ")[0] for line in _xray().splitlines()]
    private = lines[0].split(": ", 1)[1]
    assert _xray("-i", private) == out


@pytest.mark.root
def test_std_encoding_matches_xray(capsys: pytest.CaptureFixture[str]) -> None:
    private = _xray("--std-encoding").splitlines()[0].split(": ", 1)[1]
    assert _tunray(capsys, "--std-encoding", "-i", private) == _xray("--std-encoding", "-i", private)


def test_bad_input_is_one_line_and_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["x25519", "-i", "c2hvcnQ"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid length" in err
