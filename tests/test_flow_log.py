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
    assert [json.loads(line)["user_id"] for line in lines] == ["a", "b"]


def test_stderr_and_off(capsys: pytest.CaptureFixture[str]):
    log = FlowLog()
    log.open("-")
    log.write({"n": 1})
    log.open("")
    log.write({"n": 2})
    err = capsys.readouterr().err
    assert err.count(PREFIX) == 1 and '{"n":1}' in err


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_file_is_json_lines_with_a_utc_timestamp_field(tmp_path: Path):
    path = tmp_path / "flows.jsonl"
    log = FlowLog(clock=Clock(1_700_000_000.25))
    log.open(str(path))
    log.write({"user_id": "a", "model": "m"})
    log.close()
    (line,) = path.read_text().splitlines()
    assert json.loads(line) == {"ts": "2023-11-14T22:13:20.250Z", "user_id": "a", "model": "m"}


@pytest.mark.parametrize("rotate", ["rename", "remove"])
def test_file_is_reopened_after_logrotate(tmp_path: Path, rotate: str):
    path = tmp_path / "flows.jsonl"
    clock = Clock(1000.0)
    log = FlowLog(clock=clock)
    log.open(str(path))
    log.write({"n": 1})
    if rotate == "rename":
        path.rename(tmp_path / "flows.jsonl.1")
    else:
        path.unlink()
    clock.now += 0.5  # checked at most once a second: still the old file
    log.write({"n": 2})
    assert not path.exists()
    clock.now += 1.0
    log.write({"n": 3})
    log.close()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [3]
    if rotate == "rename":
        assert [json.loads(line)["n"] for line in (tmp_path / "flows.jsonl.1").read_text().splitlines()] == [1, 2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
