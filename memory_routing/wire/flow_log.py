"""One JSON line per routed flow, to stderr or a file.

The file is JSON Lines: one object per line, its time in the ``ts`` field (ISO 8601, UTC,
milliseconds), nothing else on the line. stderr keeps a readable form beside mitmproxy's own
lines: ``[HH:MM:SS.mmm] memory-routing: routed {...}``. The file survives logrotate: when the
path stops naming the file being written (renamed or removed), it is reopened; that is checked
at most once a second.

Written directly rather than through ``logging``: mitmproxy turns every log record into an
event delivered to all of its addons, which at one record per request cost ~15% of the
proxy's throughput (see bench/). Pure logic, no mitmproxy imports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

PREFIX = "memory-routing: routed "
STDERR = "-"
CLIENT_NAME_LIMIT = 64


def client_name(user_agent: str | None) -> str:
    """The client's product token (``OpenAI/Python``, ``claude-cli/2.0.1``): enough to tell clients apart."""
    if not user_agent:
        return ""
    return user_agent.split(" ", 1)[0][:CLIENT_NAME_LIMIT]
# How often (seconds) a file target checks whether logrotate moved it away.
REOPEN_CHECK_SECONDS = 1.0


class FlowLog:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._stream: IO[str] | None = sys.stderr
        self._owned = False
        self.target = STDERR
        self._path = ""
        self._inode: tuple[int, int] | None = None
        self._checked_at = 0.0
        # json.dumps builds a new encoder on every call with non-default separators.
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        self._second = -1
        self._second_stamp = ""

    def open(self, target: str) -> None:
        """``-`` for stderr, an empty string for no flow log, otherwise a file to append to."""
        self.close()
        self.target = target
        if target == STDERR:
            self._stream = sys.stderr
        elif not target:
            self._stream = None
        else:
            self._path = os.path.expanduser(target)
            self._open_file()

    def _open_file(self) -> None:
        # The log names users and models, not secrets, but it is nobody else's business.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)
        self._stream = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        self._owned = True
        self._checked_at = self._clock()

    def _reopen_if_moved(self, now: float) -> None:
        self._checked_at = now
        try:
            st = os.stat(self._path)
            current = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current != self._inode:
            if self._stream is not None:
                self._stream.close()
            self._open_file()

    def write(self, fields: dict[str, Any]) -> None:
        if self._stream is None:
            return
        now = self._clock()
        if int(now) != self._second:  # formatting the clock once a second is enough
            self._second = int(now)
            moment = time.gmtime(now) if self._owned else time.localtime(now)
            self._second_stamp = time.strftime("%Y-%m-%dT%H:%M:%S" if self._owned else "%H:%M:%S", moment)
        millis = f"{int(now % 1 * 1000):03d}"
        if not self._owned:
            self._stream.write(f"[{self._second_stamp}.{millis}] {PREFIX}{self._encode(fields)}\n")
            return
        if now - self._checked_at >= REOPEN_CHECK_SECONDS or now < self._checked_at:
            self._reopen_if_moved(now)
        # Line-buffered (opened so): each line goes out whole without a flush call per flow.
        self._stream.write(self._encode({"ts": f"{self._second_stamp}.{millis}Z", **fields}) + "\n")

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream, self._owned, self._inode = None, False, None
