"""Addon owning the proxy's one local SQLite file: the embedded memory and the usage rows.

Other addons hold this object and read ``memory`` / ``usage`` when they use them (never a copy
taken earlier): a changed ``memory_routing_store`` closes the old file and opens the new one.
Whoever writes from a thread of its own registers a drain in ``before_close``; ``done()`` runs
those before it closes the file, so no queued row is lost and no write meets a closed connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx, exceptions

from memory_routing.addons.shared_servers import SharedServers
from memory_routing.dashboard.usage_rows import SQLiteUsageStore
from memory_routing.dashboard.usage_rows_pg import PostgresUsageStore
from memory_routing.memory.pg_store import PostgresMemoryStore
from memory_routing.memory.records import MemoryStoreError
from memory_routing.memory.store import MemoryStore, SQLiteMemoryStore

log = logging.getLogger(__name__)

STORE_OPTION = "memory_routing_store"
DEFAULT_STORE_NAME = "memory-routing-memory.sqlite3"


def store_path(option_value: str, confdir: str) -> Path:
    """The file the option names; empty: the default name in mitmproxy's confdir."""
    if option_value:
        return Path(os.path.expanduser(option_value))
    return Path(os.path.expanduser(confdir)) / DEFAULT_STORE_NAME


class LocalStores:
    """Opens the store file at start-up (mode 0600) and closes it when mitmproxy stops."""

    def __init__(self, shared: SharedServers | None = None) -> None:
        # The fleet's servers (storage.*): when a database is configured, the memory and the
        # usage rows go there instead of the local file's tables.
        self.shared = shared
        self.path: Path | None = None
        # The file's memory store is always opened with it (it sets the file up); the memory
        # addon decides whether to use it. With a fleet database, `memory` is the database's.
        self.file_memory: SQLiteMemoryStore | None = None
        self._fleet_memory: PostgresMemoryStore | None = None
        # The fleet's database when `storage.database_url` is set, else the file's table.
        self.usage: SQLiteUsageStore | PostgresUsageStore | None = None
        self.before_close: list[Callable[[], None]] = []
        self._usage_conn: sqlite3.Connection | None = None

    def load(self, loader) -> None:
        loader.add_option(
            STORE_OPTION,
            str,
            "",
            f"""
            Path of the local SQLite file holding the embedded memory and the usage rows
            (created with mode 0600). Empty: {DEFAULT_STORE_NAME} in mitmproxy's confdir.
            """,
        )

    def configure(self, updated) -> None:
        if STORE_OPTION not in updated and "confdir" not in updated and self.path is not None:
            return
        path = store_path(ctx.options.memory_routing_store, ctx.options.confdir)
        if path == self.path:
            return
        self.open(path)

    def running(self) -> None:
        if self.path is None:
            self.open(store_path(ctx.options.memory_routing_store, ctx.options.confdir))

    def done(self) -> None:
        self.close()

    @property
    def memory(self) -> MemoryStore | None:
        """The memory store in use: the fleet's PostgreSQL when storage.database_url is set, else
        the file's (None while closed). The PostgreSQL store is made on first use; it waits for
        nothing (a database not migrated yet raises SharedServerUnavailable when used)."""
        if self.file_memory is None:
            return None
        database = self.shared.database if self.shared is not None else None
        if database is None:
            return self.file_memory
        if self._fleet_memory is None or self._fleet_memory.database is not database:
            if self._fleet_memory is not None:
                self._fleet_memory.close()
            self._fleet_memory = PostgresMemoryStore(database)
        return self._fleet_memory

    @property
    def outage_rows(self) -> int | None:
        """How many turns the memory writer holds while the fleet database is away
        (storage.outage_queue_rows; 0: none); None without storage settings."""
        settings = self.shared.settings if self.shared is not None else None
        return settings.outage_queue_rows if settings is not None else None

    @property
    def is_open(self) -> bool:
        return self.usage is not None

    def open(self, path: Path) -> None:
        """Opens ``path`` (closing the file open before); OptionsError naming the option and path."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            memory = SQLiteMemoryStore(path)
        except (OSError, sqlite3.Error, MemoryStoreError) as e:
            raise exceptions.OptionsError(f"{STORE_OPTION}: cannot open {path}: {e}") from None
        usage_conn: sqlite3.Connection | None = None
        usage: SQLiteUsageStore | PostgresUsageStore
        try:
            if self.shared is not None and self.shared.database is not None:
                usage = PostgresUsageStore(self.shared.database)
            else:
                usage_conn = memory.open_connection()
                usage = SQLiteUsageStore(usage_conn)
        except (OSError, sqlite3.Error) as e:
            memory.close()
            raise exceptions.OptionsError(f"{STORE_OPTION}: cannot open {path}: {e}") from None
        self.close()
        self.path, self.file_memory, self.usage, self._usage_conn = path, memory, usage, usage_conn

    def close(self) -> None:
        if self.file_memory is None and self.usage is None:
            return
        for drain in self.before_close:
            try:
                drain()
            except Exception:  # one failing drain must not keep the file open
                log.exception("draining before closing %s failed", self.path)
        memory, usage_conn, fleet_memory = self.file_memory, self._usage_conn, self._fleet_memory
        self.file_memory = self.usage = self._usage_conn = self._fleet_memory = None
        if usage_conn is not None:
            usage_conn.close()
        if memory is not None:
            memory.close()
        if fleet_memory is not None:
            fleet_memory.close()

    def status(self) -> dict[str, object]:
        """Where the file is and how much it holds: counts only, never contents."""
        status: dict[str, object] = {"path": str(self.path) if self.path else None, "open": self.is_open}
        if (recovery := self.recovery()) is not None:
            status["recovered"] = recovery
        return status

    def recovery(self) -> dict[str, object] | None:
        """The file was damaged when opened: where the damaged one is and how many rows were saved."""
        memory = self.file_memory
        if memory is None or memory.recovery is None:
            return None
        return memory.recovery.as_status()
