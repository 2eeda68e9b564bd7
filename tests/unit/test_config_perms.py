"""Start-up and ``-test`` warn about config files (and files they name) others can change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tunray.cli import main
from tunray.config.perms import named_files, unsafe_files

CONFIG = {"inbounds": [], "outbounds": [{"protocol": "freedom", "tag": "direct"}]}


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o644, False), (0o664, True), (0o666, True)])
def test_run_test_warns_about_a_writable_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int, warned: bool
) -> None:
    os.chmod(tmp_path, 0o700)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(CONFIG))
    os.chmod(cfg, mode)
    assert main(["run", "-test", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert (f"warning: {cfg} is writable by" in err) is warned, err


def test_files_named_by_the_config_and_their_directories(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    key = shared / "key.pem"
    key.write_text("x")
    os.chmod(key, 0o600)
    raw = {"outbounds": [{"streamSettings": {"tlsSettings": {"certificates": [{"keyFile": str(key)}]}}}]}
    assert list(named_files(raw)) == [str(key)]
    lines = unsafe_files([], raw)
    assert lines == [f"{shared} is writable by its group (mode 0775): whoever can change it controls tunray"]


def test_an_unknown_process_user_fails_run_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**CONFIG, "process": {"user": "no-such-user-tunray"}}))
    assert main(["run", "-test", "-c", str(cfg)]) == 23
    assert "process.user: no such user 'no-such-user-tunray'" in capsys.readouterr().err
    assert main(["run", "-test", "-c", str(cfg), "-user", "nobody"]) == 0  # the flag wins
