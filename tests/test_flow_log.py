"""The per-flow JSON line: stderr, a private file, or nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from memory_routing.wire.flow_log import PREFIX, FlowLog


def test_file_target_is_private_and_appended(tmp_path: Path):
    path = tmp_path / "flows.jsonl"
    log = FlowLog()
    log.open(str(path))
    log.write({"user_id": "a"})
    log.close()
    log.open(str(path))
    log.write({"user_id": "b"})
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [json.loads(line.split(PREFIX, 1)[1])["user_id"] for line in lines] == ["a", "b"]


def test_stderr_and_off(capsys: pytest.CaptureFixture[str]):
    log = FlowLog()
    log.open("-")
    log.write({"n": 1})
    log.open("")
    log.write({"n": 2})
    err = capsys.readouterr().err
    assert err.count(PREFIX) == 1 and '{"n":1}' in err
