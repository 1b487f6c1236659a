"""Addon holding the embedded memory's SQLite file (a minimal stand-in for local.stores.LocalStores).

Same surface as LocalStores for the memory: ``memory`` (the open store or None) and
``before_close`` (drains run before the file is closed). The file is
``memory-routing-memory.sqlite3`` in mitmproxy's confdir, opened when the confdir is known.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx, exceptions

from memory_routing.memory.records import MemoryStoreError
from memory_routing.memory.store import SQLiteMemoryStore

log = logging.getLogger(__name__)

STORE_NAME = "memory-routing-memory.sqlite3"


class MemoryStoreHolder:
    def __init__(self) -> None:
        self.path: Path | None = None
        self.memory: SQLiteMemoryStore | None = None
        self.before_close: list[Callable[[], None]] = []

    def configure(self, updated) -> None:
        if "confdir" not in updated and self.path is not None:
            return
        path = Path(os.path.expanduser(ctx.options.confdir)) / STORE_NAME
        if path == self.path:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            store = SQLiteMemoryStore(path)
        except (OSError, MemoryStoreError) as e:
            raise exceptions.OptionsError(f"confdir: cannot open the memory store {path}: {e}") from None
        self.close()
        self.path, self.memory = path, store

    def done(self) -> None:
        self.close()

    def close(self) -> None:
        if self.memory is None:
            return
        for drain in self.before_close:
            try:
                drain()
            except Exception:  # one failing drain must not keep the file open
                log.exception("draining before closing %s failed", self.path)
        store, self.memory = self.memory, None
        store.close()
