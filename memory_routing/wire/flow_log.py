"""One JSON line per routed flow, to stderr or a file.

Written directly rather than through ``logging``: mitmproxy turns every log record into an
event delivered to all of its addons, which at one record per request cost ~15% of the
proxy's throughput (see bench/). Pure logic, no mitmproxy imports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

PREFIX = "memory-routing: routed "
STDERR = "-"
CLIENT_NAME_LIMIT = 64


def client_name(user_agent: str | None) -> str:
    """The client's product token (``OpenAI/Python``, ``claude-cli/2.0.1``): enough to tell clients apart."""
    if not user_agent:
        return ""
    return user_agent.split(" ", 1)[0][:CLIENT_NAME_LIMIT]


class FlowLog:
    def __init__(self) -> None:
        self._stream: IO[str] | None = sys.stderr
        self._owned = False
        self.target = STDERR
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
            path = os.path.expanduser(target)
            # The log names users and models, not secrets, but it is nobody else's business.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
            self._owned = True

    def write(self, fields: dict[str, Any]) -> None:
        if self._stream is None:
            return
        now = time.time()
        if int(now) != self._second:  # formatting the clock once a second is enough
            self._second = int(now)
            self._second_stamp = time.strftime("%H:%M:%S", time.localtime(now))
        # Both targets are line-buffered (stderr since Python 3.9, the file by opening it so):
        # each line goes out whole without a flush call per flow.
        self._stream.write(f"[{self._second_stamp}.{int(now % 1 * 1000):03d}] {PREFIX}{self._encode(fields)}\n")

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream, self._owned = None, False
