"""Rows read back out of a damaged SQLite file into a fresh one (pure: sqlite3 only).

SQLite keeps a table's rows in a b-tree ordered by rowid. A damaged page breaks every read
that passes through it, and so every scan from before it; pages before and after it stay
readable. So each table is read in rowid order, and where a read fails, the first rowid from
which reading works again is found by bisection (reads from inside the damaged range fail,
reads from past it work), and the copy goes on from there. Only the rows on damaged pages are
lost. Indexes and full-text tables are not copied: the fresh file rebuilds them from the rows
(the memory store's triggers fill its FTS index as the rows go in).

The sqlite3 command-line tool's ``.recover`` reads damaged pages too, but Python's sqlite3
module has no such call, and the tool is not installed everywhere; this copy always works.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MAX_ROWID = 2**63 - 1
_BATCH = 500


@dataclass
class Recovery:
    """What a recovery saved: rows per table, and how many damaged stretches were skipped."""

    source: Path
    rows: dict[str, int] = field(default_factory=dict)
    skipped_stretches: int = 0
    unreadable_tables: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def as_status(self) -> dict[str, object]:
        return {
            "damaged_file": str(self.source), "rows_saved": dict(self.rows), "total_rows_saved": self.total_rows,
            "damaged_stretches_skipped": self.skipped_stretches, "unreadable_tables": list(self.unreadable_tables),
        }


def recover_rows(damaged: Path, target: sqlite3.Connection) -> Recovery:
    """Copies every readable row of ``damaged``'s ordinary tables into ``target`` (whose own
    schema is already set up; tables it lacks are created from the damaged file's schema)."""
    recovery = Recovery(damaged)
    source = _open_damaged(damaged)
    # Damaged text must not stop the copy: undecodable bytes are replaced, not raised.
    source.text_factory = lambda raw: raw.decode("utf-8", "replace")
    try:
        try:
            tables = _tables(source)
        except sqlite3.DatabaseError as e:
            log.warning("the damaged file's table list is unreadable (%s): no rows can be saved", e)
            recovery.unreadable_tables.append("sqlite_master")
            return recovery
        existing = {name for (name,) in target.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for name, sql in tables:
            if name not in existing:
                try:
                    target.execute(sql)
                except sqlite3.Error as e:
                    log.warning("could not recreate table %s from the damaged file (%s)", name, e)
                    recovery.unreadable_tables.append(name)
                    continue
            try:
                recovery.rows[name] = _copy_table(source, target, name, recovery)
            except sqlite3.DatabaseError as e:
                log.warning("table %s of the damaged file is unreadable (%s)", name, e)
                recovery.unreadable_tables.append(name)
    finally:
        source.close()
    return recovery


def _open_damaged(damaged: Path) -> sqlite3.Connection:
    """Read-only and immutable (no lock, no -shm file made beside it): the damaged file stays as
    it was, for the user (or the sqlite3 tool) to look at. Unless a WAL file holds part of its
    content: reading that takes an ordinary connection."""
    wal = damaged.with_name(damaged.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return sqlite3.connect(damaged, isolation_level=None)
    return sqlite3.connect(f"{damaged.as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None)


def _tables(source: sqlite3.Connection) -> list[tuple[str, str]]:
    """(name, CREATE statement) of the ordinary tables: no virtual tables, nor their shadow
    tables (rebuilt by the fresh file), nor SQLite's own."""
    rows = source.execute("SELECT type, name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    virtual = [name for _, name, sql in rows if (sql or "").upper().startswith("CREATE VIRTUAL")]
    return [
        (name, sql) for _, name, sql in rows
        if sql and not name.startswith("sqlite_") and name not in virtual
        and not any(name.startswith(f"{v}_") for v in virtual)
    ]


def _copy_table(source: sqlite3.Connection, target: sqlite3.Connection, table: str, recovery: Recovery) -> int:
    quoted = _quote(table)
    columns = [row[1] for row in source.execute(f"PRAGMA table_info({quoted})")]
    names = ", ".join(_quote(c) for c in columns)
    select = f"SELECT rowid, {names} FROM {quoted} WHERE rowid > ? ORDER BY rowid LIMIT {_BATCH}"
    insert = f"INSERT OR IGNORE INTO {quoted} ({names}) VALUES ({', '.join('?' * len(columns))})"
    copied = 0
    after = -_MAX_ROWID - 1
    target.execute("BEGIN")
    try:
        while True:
            try:
                batch = source.execute(select, (after,)).fetchall()
            except sqlite3.DatabaseError:
                batch = _rows_up_to_damage(source, select, after)
                if not batch:
                    resume = _first_readable_after(source, select, after)
                    if resume is None:
                        break
                    recovery.skipped_stretches += 1
                    after = resume
                    continue
            if not batch:
                break
            for row in batch:
                try:
                    copied += target.execute(insert, row[1:]).rowcount
                except sqlite3.Error:
                    pass  # a row damaged into breaking a constraint: skipped
            after = batch[-1][0]
        target.execute("COMMIT")
    except BaseException:
        target.execute("ROLLBACK")
        raise
    return copied


def _rows_up_to_damage(source: sqlite3.Connection, select: str, after: int) -> list[tuple[Any, ...]]:
    """The rows of a batch that failed, one by one up to the first damaged one."""
    single = select.replace(f"LIMIT {_BATCH}", "LIMIT 1")
    rows: list[tuple[Any, ...]] = []
    while len(rows) < _BATCH:
        try:
            row = source.execute(single, (after,)).fetchone()
        except sqlite3.DatabaseError:
            break
        if row is None:
            break
        rows.append(row)
        after = row[0]
    return rows


def _first_readable_after(source: sqlite3.Connection, select: str, after: int) -> int | None:
    """The smallest rowid bound past ``after`` from which a read works again, or None if none
    does. Reads from inside a damaged stretch fail and from past it work: steps that double
    find a readable bound near the damage (not past the next damaged stretch), then bisection
    finds the first one."""
    single = select.replace(f"LIMIT {_BATCH}", "LIMIT 1")

    def readable(bound: int) -> bool:
        try:
            source.execute(single, (bound,)).fetchone()
        except sqlite3.DatabaseError:
            return False
        return True

    low, step = after, 1  # not readable(low)
    while not readable(after + step):
        low = after + step
        if step > _MAX_ROWID // 4 or after + 2 * step >= _MAX_ROWID:
            return None
        step *= 2
    high = after + step  # readable(high)
    while high - low > 1:
        middle = (low + high) // 2
        if readable(middle):
            high = middle
        else:
            low = middle
    return high


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
