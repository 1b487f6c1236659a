"""Where memories live: the MemoryStore interface and its SQLite (WAL + FTS5 BM25) implementation.

One file holds everything. Writes go through one connection (the writer thread); every thread
that reads gets its own read connection, so searches from the recall threads run side by side
and a long write never stalls them (WAL lets readers and the writer run at once).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .dates import period_keys
from .recover import Recovery, recover_rows
from .records import (BlockLine, KeptBlock, Memory, MemoryStoreClosedError, MemoryStoreError,
                      MemoryTimeoutError, NewMemory, memories_of_lines)
from .windows import MIN_WINDOW_TURNS, WINDOW_TURNS, window_text

log = logging.getLogger(__name__)

_COLUMNS = "id, user_id, conversation_id, client, model, role, text, created_at"
_TURNS, _WINDOWS = "memories_fts", "memory_windows_fts"  # the two full-text indexes
_CONTENT = {_TURNS: "memories", _WINDOWS: "memory_windows"}
_WINDOWS_VERSION = 1  # PRAGMA user_version from which every turn's window is indexed
EXPORT_PAGE = 500
_MAX_QUERY_TERMS = 48
MAX_RANKED = 1500  # rows BM25 ranks per search, at most about (see _selective_terms)
_HEAVY_SHARE = 0.25  # a user owning this share of the rows is filtered after ranking (see search)
_MAX_FETCH = 2000
# From this many rows in the file, a user owning under _HEAVY_SHARE of them is ranked with their
# own statistics (see search).
USER_RANKING_MIN_ROWS = 20_000
_BM25_K1, _BM25_B = 1.2, 0.75  # FTS5's bm25() constants
_ID_CHUNK = 500  # ids per IN (...) list
_COMMON_MIN_ROWS = 10  # a word is never "common" (see search's common_share) in fewer rows than this
# Read connections map the file (shared by all of them through the OS page cache) rather than
# each copying pages into its own cache; a memory file of 100k turns is some tens of MB.
READER_MMAP_BYTES = 256 * 1024 * 1024
READER_CACHE_KIB = 8 * 1024
_CLOSE_WAIT_S = 5.0  # close() waits this long for a read in flight before interrupting it

# Words that carry no topic: dropping them keeps BM25 on the words that do, and keeps the
# posting lists an OR query walks short (latency at 100k memories).
STOPWORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are",
                       "aren", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by",
                       "can", "could", "couldn", "did", "didn", "do", "does", "doesn", "doing", "don", "down", "during", "each",
                       "few", "for", "from", "further", "get", "got", "had", "hadn", "has", "hasn", "have", "haven", "having",
                       "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is",
                       "isn", "it", "its", "itself", "just", "let", "ll", "me", "might", "more", "most", "must", "mustn", "my",
                       "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "ought", "our",
                       "ours", "ourselves", "out", "over", "own", "re", "really", "s", "same", "shall", "she", "should",
                       "shouldn", "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves",
                       "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "us",
                       "ve", "very", "was", "wasn", "we", "were", "weren", "what", "when", "where", "which", "while", "who",
                       "whom", "why", "will", "with", "won", "would", "wouldn", "you", "your", "yours", "yourself", "yourselves",
                       "hey", "hi", "hello", "oh", "yeah", "yes", "ok", "okay", "thanks", "thank", "wow", "cool", "great",
                       "good", "awesome", "lol", "gonna", "wanna", "like", "d", "m", "y"])

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str, *, limit: int = _MAX_QUERY_TERMS) -> list[str]:
    """The distinct, lower-cased, non-stopword words of `text`, in order of first appearance."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or word in seen or (len(word) < 2 and not word.isdigit()):
            continue
        seen[word] = None
        if len(seen) >= limit:
            break
    return list(seen)


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression (any of the words) for arbitrary user text; None when nothing is left.

    Every term is a quoted string, so no user text can be read as FTS5 syntax (AND, NEAR, column
    filters, unbalanced quotes, a leading '-' ...). \\w+ never yields a '"', but double it anyway.
    """
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join(_quoted(term) for term in terms)


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


@runtime_checkable
class MemoryStore(Protocol):
    """What the proxy needs from a memory backend (SQLite here; Postgres next).

    Besides its turns a store indexes windows (memory/windows.py): for each stored turn that is
    not the first of its conversation, the run of up to WINDOW_TURNS turns ending with it, made
    when the turn is added (add_many, import_jsonl) and deleted with any turn it holds (delete,
    forget_user, delete_older_than), its words leaving the store with it.
    """

    def add_many(self, memories: Sequence[NewMemory]) -> list[int]: ...

    def search(self, user_id: str, query: str, limit: int = 10, *,
               exclude_conversation_id: str | None = None,
               deadline: float | None = None,
               common_share: float | None = None) -> list[tuple[Memory, float]]: ...

    def search_windows(self, user_id: str, query: str, limit: int = 10, *,
                       exclude_conversation_id: str | None = None,
                       deadline: float | None = None,
                       common_share: float | None = None,
                       period: Sequence[str] | None = None) -> list[tuple[tuple[Memory, ...], float]]:
        """`user_id`'s windows (memory/windows.py: runs of up to WINDOW_TURNS consecutive turns of a
        conversation, each indexed as its first turn's date_label and its turns' texts) best
        matching `query`, as (the window's turns in order, score), best first; never another
        user's. Ranked as `search` ranks turns (BM25 over the window texts, the same stopwords,
        common_share and deadline). With `period` (dates.period_keys values, e.g. "m202305"),
        only windows whose first turn's period_keys hold one of them (an empty `period`: none)."""
        ...

    def neighbours(self, memory: Memory, before: int, after: int, *,
                   deadline: float | None = None) -> list[Memory]: ...

    def list(self, user_id: str, q: str | None = None, conversation_id: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[int, list[Memory]]: ...

    def get(self, memory_id: int) -> Memory | None: ...

    def delete(self, memory_id: int, user_id: str | None = None) -> bool: ...

    def forget_user(self, user_id: str) -> int: ...

    def delete_older_than(self, cutoff: float) -> int: ...

    def export_jsonl(self, user_id: str | None = None) -> Iterator[str]: ...

    def import_jsonl(self, lines: Iterable[str]) -> int: ...

    def counts(self) -> dict[str, int]: ...

    def users(self) -> builtins.list[tuple[str, int]]: ...

    def has_memories(self, user_id: str) -> bool: ...

    def save_recall_blocks(self, blocks: Sequence[KeptBlock]) -> int: ...

    def recall_blocks(self, user_id: str, turn_keys: Sequence[bytes], *,
                      deadline: float | None = None) -> dict[bytes, tuple[BlockLine, ...]]: ...

    def close(self) -> None: ...


# The FTS index also holds a token for the owner and one for the conversation, so a search
# narrows to one user (and away from the current conversation) inside FTS5 itself, before any
# row is ranked or read: at 100k memories that is the difference between ~100 ms and a few ms.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    client TEXT NOT NULL,
    model TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    text_sha BLOB NOT NULL,
    owner TEXT NOT NULL,
    thread TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS memories_dedupe
    ON memories (user_id, conversation_id, role, text_sha);
CREATE INDEX IF NOT EXISTS memories_by_user ON memories (user_id, id);
CREATE INDEX IF NOT EXISTS memories_by_conversation ON memories (user_id, conversation_id, id);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5 (
    text, owner, thread, content='memories', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, text, owner, thread) VALUES (new.id, new.text, new.owner, new.thread);
END;
CREATE TRIGGER IF NOT EXISTS memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, text, owner, thread)
        VALUES ('delete', old.id, old.text, old.owner, old.thread);
END;
-- Each turn's recall block as the provider first saw it, kept as lines (see memory/blocks.py):
-- the client resends its turns without the block, and the proxy puts it back byte for byte.
CREATE TABLE IF NOT EXISTS recall_blocks (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    turn_key BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS recall_blocks_by_turn ON recall_blocks (user_id, turn_key);
CREATE INDEX IF NOT EXISTS recall_blocks_by_age ON recall_blocks (created_at);
CREATE TABLE IF NOT EXISTS recall_block_lines (
    block_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    memory_id INTEGER NOT NULL,
    run INTEGER NOT NULL,
    date TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (block_id, position)
);  -- a rowid table: the rows of a damaged file are saved table by table in rowid order
CREATE INDEX IF NOT EXISTS recall_block_lines_by_memory ON recall_block_lines (memory_id);
-- A memory deleted (through the API, by forgetting its user, by the retention) leaves every
-- block that showed it, in the same transaction: its words leave the file with it.
CREATE TRIGGER IF NOT EXISTS memories_leave_recall_blocks AFTER DELETE ON memories BEGIN
    DELETE FROM recall_block_lines WHERE memory_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS recall_block_lines_go_with_their_block AFTER DELETE ON recall_blocks BEGIN
    DELETE FROM recall_block_lines WHERE block_id = old.id;
END;
-- Only the text counts for ranking; the tokens only filter.
INSERT INTO memories_fts (memories_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0, 0.0)');
-- Windows (memory/windows.py): for each turn, the run of up to 3 consecutive turns of its
-- conversation ending with it; text is the first turn's readable date then the turns' texts,
-- period its first turn's period keys (memory/dates.py; only filter, never ranked).
CREATE TABLE IF NOT EXISTS memory_windows (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    text TEXT NOT NULL,
    owner TEXT NOT NULL,
    thread TEXT NOT NULL,
    period TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_windows_by_turn ON memory_windows (user_id, conversation_id, last_id);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_windows_fts USING fts5 (
    text, owner, thread, period, content='memory_windows', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS memory_windows_fts_insert AFTER INSERT ON memory_windows BEGIN
    INSERT INTO memory_windows_fts (rowid, text, owner, thread, period)
        VALUES (new.id, new.text, new.owner, new.thread, new.period);
END;
CREATE TRIGGER IF NOT EXISTS memory_windows_fts_delete AFTER DELETE ON memory_windows BEGIN
    INSERT INTO memory_windows_fts (memory_windows_fts, rowid, text, owner, thread, period)
        VALUES ('delete', old.id, old.text, old.owner, old.thread, old.period);
END;
-- A deleted turn takes every window holding it along (its words are in their text).
CREATE TRIGGER IF NOT EXISTS memories_leave_windows AFTER DELETE ON memories BEGIN
    DELETE FROM memory_windows WHERE user_id = old.user_id AND conversation_id = old.conversation_id
        AND last_id >= old.id AND first_id <= old.id;
END;
INSERT INTO memory_windows_fts (memory_windows_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0, 0.0, 0.0)');
"""


def owner_token(user_id: str) -> str:
    return "u" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def thread_token(user_id: str, conversation_id: str) -> str:
    key = f"{user_id}\0{conversation_id}".encode("utf-8", "surrogatepass")
    return "c" + hashlib.sha256(key).hexdigest()[:24]


def text_sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def row_to_memory(row: Sequence[Any]) -> Memory:
    """A memory from a row of its columns in the order of _COLUMNS (both stores' order)."""
    return Memory(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], float(row[7]))


def exported_lines(page_after: Callable[[int], Sequence[Sequence[Any]]]) -> Iterator[str]:
    """One JSON line (no newline) per memory, oldest first: `page_after(last_id)` reads the next
    EXPORT_PAGE rows after an id, so an export never holds the whole store."""
    last_id = 0
    while rows := page_after(last_id):
        for row in rows:
            yield row_to_memory(row).to_json()
        last_id = int(rows[-1][0])


class SQLiteMemoryStore:
    """MemoryStore in one SQLite file: WAL, mode 0600, secure_delete, FTS5 BM25 with Porter stemming."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._write_lock = threading.Lock()
        # thread ident -> that thread's read connection; guarded by _readers_lock.
        self._readers: dict[int, _Reader] = {}
        self._readers_lock = threading.Lock()
        self._closed = False
        # Set when the file was damaged at start: what was saved from it (see memory.recover).
        self.recovery: Recovery | None = None
        try:
            self._writer = self._open_checked()
        except sqlite3.DatabaseError as e:
            if not _is_corruption(e):
                raise MemoryStoreError(f"memory store {self.path}: {e}") from e
            aside = self._move_aside()
            self._writer = self._open_checked()
            self.recovery = self._recover(aside, e)
        # Rows per user, kept by this store's own writes: tells a search whether the user owns
        # most of the file (then narrowing by owner inside FTS5 costs more than it saves).
        # Searches read these while the writer thread updates them: single dict.get / int reads
        # only (iterating the dict here could see it change size).
        self._user_rows: dict[str, int] = dict(
            self._writer.execute("SELECT user_id, count(*) FROM memories GROUP BY user_id").fetchall())
        self._total_rows = sum(self._user_rows.values())
        self._index_missing_windows()
        # Set once the file's index and rows have been read through once (see _warm).
        self.warmed = threading.Event()
        self._warmer = threading.Thread(target=self._warm, name="memory-store-warm", daemon=True)
        self._warmer.start()

    # --- connections -------------------------------------------------------------------------

    def open_connection(self) -> sqlite3.Connection:
        """A new connection to the same file, set up like the store's own (other tables may live here).

        The caller owns it: use it from one thread at a time and close it.
        """
        _create_private_file(self.path)
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _reader(self) -> _Reader:
        """This thread's read connection, opened on its first read.

        A connection of a thread that has ended is closed when the next one is opened, so a
        pool that replaces its threads does not pile up connections.
        """
        ident = threading.get_ident()
        reader = self._readers.get(ident)
        if reader is not None and reader.thread() is threading.current_thread():
            return reader
        conn = self.open_connection()
        try:
            conn.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
            conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        reader = _Reader(conn, threading.Lock(), weakref.ref(threading.current_thread()))
        with self._readers_lock:
            if self._closed:
                conn.close()
                raise MemoryStoreClosedError(f"memory store {self.path} is closed")
            # A thread ident is reused once its thread has ended: the entry under it is stale too.
            ended = [key for key, r in self._readers.items() if key == ident or r.ended()]
            stale = [self._readers.pop(key) for key in ended]
            self._readers[ident] = reader
        for old in stale:
            old.close()
        return reader

    def _warm(self) -> None:
        """Reads the FTS index and the rows once, off the request path, so that the first searches
        after a start find the file's pages in the OS cache rather than on disk (at 100k memories
        a cold search reads tens of scattered pages). Stops as soon as the store is closed."""
        try:
            conn = self.open_connection()
        except sqlite3.Error:
            return
        try:
            conn.set_progress_handler(lambda: self._closed, 10_000)
            for sql in ("SELECT sum(length(block)) FROM memories_fts_data",
                        "SELECT sum(length(text)) FROM memories"):
                conn.execute(sql).fetchall()
        except sqlite3.Error:
            pass  # interrupted by close(), or a file being moved aside: only a cache warm-up is lost
        finally:
            conn.close()
            self.warmed.set()

    def _open_checked(self) -> sqlite3.Connection:
        conn = self.open_connection()
        try:
            conn.executescript(_SCHEMA)
            verdict = conn.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                raise _CorruptStore(f"quick_check: {verdict[0] if verdict else 'no answer'}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        return aside

    def _recover(self, aside: Path, error: Exception) -> Recovery:
        """Copies what can be read of the damaged file (kept as ``aside``) into the fresh one."""
        try:
            recovery = recover_rows(aside, self._writer)
        except sqlite3.Error as e:  # the fresh file stays usable, empty or partly filled
            log.error("memory store %s: saving rows from %s failed (%s)", self.path, aside, e)
            recovery = Recovery(aside, unreadable_tables=["(all)"])
        saved = ", ".join(f"{table}: {count}" for table, count in recovery.rows.items()) or "none"
        log.warning("memory store %s was unreadable (%s); moved it to %s and saved %d rows from it into a "
                    "fresh file (%s; %d damaged stretches skipped)",
                    self.path, error, aside, recovery.total_rows, saved, recovery.skipped_stretches)
        return recovery

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryStoreClosedError(f"memory store {self.path} is closed")

    # --- writes ------------------------------------------------------------------------------

    def add_many(self, memories: Sequence[NewMemory]) -> list[int]:
        """Stores the memories in one transaction; returns one id per input.

        The same (user, conversation, role, text) is stored once: a repeat gets the first one's id.
        """
        return self._add_many(memories)[0]

    def _add_many(self, memories: Sequence[NewMemory]) -> tuple[list[int], int]:
        """(one id per input, how many rows were new)."""
        self._check_open()
        ids: list[int] = []
        added: dict[str, int] = {}
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for m in memories:
                    sha = text_sha(m.text)
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO memories (user_id, conversation_id, client, model, role,"
                        " text, created_at, text_sha, owner, thread) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (m.user_id, m.conversation_id, m.client, m.model, m.role, m.text,
                         float(m.created_at), sha, owner_token(m.user_id),
                         thread_token(m.user_id, m.conversation_id)))
                    if cur.rowcount == 1 and cur.lastrowid is not None:
                        ids.append(cur.lastrowid)
                        added[m.user_id] = added.get(m.user_id, 0) + 1
                        self._add_window(conn, m.user_id, m.conversation_id, cur.lastrowid)
                    else:
                        row = conn.execute(
                            "SELECT id FROM memories WHERE user_id = ? AND conversation_id = ?"
                            " AND role = ? AND text_sha = ?",
                            (m.user_id, m.conversation_id, m.role, sha)).fetchone()
                        ids.append(int(row[0]))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            for user_id, n in added.items():
                self._user_rows[user_id] = self._user_rows.get(user_id, 0) + n
            self._total_rows += sum(added.values())
        return ids, sum(added.values())

    @staticmethod
    def _add_window(conn: sqlite3.Connection, user_id: str, conversation_id: str, last_id: int) -> None:
        """Indexes the window ending with turn `last_id` (see memory/windows.py)."""
        rows = conn.execute("SELECT id, text, created_at FROM memories WHERE user_id = ? AND conversation_id = ?"
                            " AND id <= ? ORDER BY id DESC LIMIT ?",
                            (user_id, conversation_id, last_id, WINDOW_TURNS)).fetchall()
        if len(rows) < MIN_WINDOW_TURNS:
            return
        rows.reverse()
        first_at = float(rows[0][2])
        conn.execute("INSERT INTO memory_windows (user_id, conversation_id, first_id, last_id, created_at, text,"
                     " owner, thread, period) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (user_id, conversation_id, int(rows[0][0]), last_id, first_at,
                      window_text(first_at, [r[1] for r in rows]), owner_token(user_id),
                      thread_token(user_id, conversation_id), " ".join(period_keys(first_at))))

    def _index_missing_windows(self) -> None:
        """Builds the windows of a file written before windows existed (PRAGMA user_version under
        _WINDOWS_VERSION): every turn's window, in one transaction, once."""
        conn = self._writer
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= _WINDOWS_VERSION:
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM memory_windows LIMIT 1").fetchone() is None:
                    for user_id, conversation_id, memory_id in conn.execute(
                            "SELECT user_id, conversation_id, id FROM memories ORDER BY id").fetchall():
                        self._add_window(conn, user_id, conversation_id, int(memory_id))
                conn.execute(f"PRAGMA user_version = {_WINDOWS_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def delete(self, memory_id: int, user_id: str | None = None) -> bool:
        """Deletes one memory (only if it is `user_id`'s, when given); True when one was deleted."""
        self._check_open()
        where = "id = ?"
        args: list[int | str] = [memory_id]
        if user_id is not None:
            where += " AND user_id = ?"
            args.append(user_id)
        return self._delete(where, args) > 0

    def forget_user(self, user_id: str) -> int:
        """Deletes every memory of `user_id`; returns how many."""
        self._check_open()
        deleted = self._delete("user_id = ?", [user_id])
        self._delete_recall_blocks("user_id = ?", [user_id])
        return deleted

    def delete_older_than(self, cutoff: float) -> int:
        """Deletes every memory created before `cutoff` (epoch seconds), as DELETE does (the words
        leave the file); returns how many. The retention (memory.retention_days) calls it."""
        self._check_open()
        deleted = self._delete("created_at < ?", [float(cutoff)])
        self._delete_recall_blocks("created_at < ?", [float(cutoff)])
        return deleted

    def _delete(self, where: str, args: builtins.list[Any]) -> int:
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                per_user = conn.execute(
                    f"SELECT user_id, count(*) FROM memories WHERE {where} GROUP BY user_id", args).fetchall()
                deleted = conn.execute(f"DELETE FROM memories WHERE {where}", args).rowcount
                if deleted:
                    # An FTS5 delete only appends tombstones; the terms stay in older segments
                    # until they are merged. 'optimize' rewrites the index without them, and
                    # secure_delete zeroes the freed pages, so the words are gone from the file.
                    conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')")
                    conn.execute("INSERT INTO memory_windows_fts (memory_windows_fts) VALUES ('optimize')")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._total_rows -= deleted
            for user_id, n in per_user:
                left = self._user_rows.get(user_id, 0) - n
                if left > 0:
                    self._user_rows[user_id] = left
                else:
                    self._user_rows.pop(user_id, None)
            if deleted:
                # Old page images stay in the WAL until a checkpoint copies them back over.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _delete_recall_blocks(self, where: str, args: builtins.list[Any]) -> int:
        with self._write_lock:
            return self._writer.execute(f"DELETE FROM recall_blocks WHERE {where}", args).rowcount

    def save_recall_blocks(self, blocks: Sequence[KeptBlock]) -> int:
        """Keeps turns' recall blocks in one transaction; returns how many were new.

        The first block kept for a (user, turn key) stays: it is what the provider saw. A line
        whose memory has been deleted meanwhile (a block waits in the writer's queue) is left out.
        """
        self._check_open()
        saved = 0
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for block in blocks:
                    cur = conn.execute("INSERT OR IGNORE INTO recall_blocks (user_id, turn_key, created_at)"
                                       " VALUES (?, ?, ?)", (block.user_id, block.turn_key, float(block.created_at)))
                    if cur.rowcount != 1:
                        continue
                    saved += 1
                    block_id = cur.lastrowid
                    live = {r[0] for r in conn.execute(
                        f"SELECT id FROM memories WHERE user_id = ? AND id IN ({','.join('?' * len(block.lines))})",
                        [block.user_id, *(line.memory_id for line in block.lines)])} if block.lines else set()
                    conn.executemany(
                        "INSERT INTO recall_block_lines (block_id, position, memory_id, run, date, body)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [(block_id, position, line.memory_id, line.run, line.date, line.body)
                         for position, line in enumerate(block.lines) if line.memory_id in live])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return saved

    def import_jsonl(self, lines: Iterable[str]) -> int:
        """Adds the memories of exported lines (new ids; repeats are skipped); returns how many were new.

        A bad line raises MemoryRecordError naming its line number, and nothing is imported.
        """
        self._check_open()
        return self._add_many(memories_of_lines(lines))[1]

    # --- reads -------------------------------------------------------------------------------

    def _read(self, sql: str, args: Sequence[Any] = (), deadline: float | None = None) -> builtins.list[Any]:
        """Runs a read; with a deadline (time.monotonic() seconds) it is interrupted when late."""
        self._check_open()
        if deadline is not None and time.monotonic() >= deadline:
            raise MemoryTimeoutError("memory read: the deadline had passed before it started")
        reader = self._reader()
        # Only this thread reads through `reader`; the lock is for close(), which must not close
        # a connection in the middle of a read.
        if not reader.lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise MemoryTimeoutError("memory read: waited past the deadline for the connection")
        try:
            self._check_open()
            conn = reader.conn
            if deadline is None:
                return conn.execute(sql, args).fetchall()
            # SQLite calls this every 1000 VM steps; a true answer interrupts the statement.
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:
                if time.monotonic() > deadline:
                    raise MemoryTimeoutError("memory read: interrupted at its deadline") from e
                raise
            finally:
                conn.set_progress_handler(None, 0)
        finally:
            reader.lock.release()

    def search(self, user_id: str, query: str, limit: int = 10, *,
               exclude_conversation_id: str | None = None,
               deadline: float | None = None,
               common_share: float | None = None) -> list[tuple[Memory, float]]:
        """`user_id`'s memories best matching `query` (BM25, higher score is better); never another user's.

        With a deadline (a time.monotonic() value) a late search raises MemoryTimeoutError.
        With common_share, words found in more than that share of the user's memories (names,
        greetings: words that are everywhere in one user's memory) are left out of the query,
        unless every word is that common.

        In a file of USER_RANKING_MIN_ROWS rows or more, a user owning a small share of it is
        ranked with their own statistics (_ranked_in_user), not FTS5's bm25(): bm25() weighs each
        word by its rows in the whole file, which it counts by walking them all (~4 ms for a word
        in 40k rows, ten times the search itself), and other users' rows would then decide which
        of this user's memories come first (LoCoMo dev with 100k rows of another user: recall_any
        0.812 with bm25(), 0.836 with the user's statistics, the same as with no other rows).
        """
        ranked = self._search_index(_TURNS, user_id, query, limit, exclude_conversation_id, deadline,
                                    common_share, None)
        if not ranked:
            return []
        ids = [rowid for rowid, _ in ranked]
        found = {r[0]: r for r in self._read(f"SELECT {_COLUMNS} FROM memories WHERE id IN ({','.join('?' * len(ids))})"
                                             " AND user_id = ?", [*ids, user_id], deadline)}
        return [(row_to_memory(found[rowid]), score) for rowid, score in ranked if rowid in found]

    def search_windows(self, user_id: str, query: str, limit: int = 10, *,
                       exclude_conversation_id: str | None = None,
                       deadline: float | None = None,
                       common_share: float | None = None,
                       period: Sequence[str] | None = None) -> list[tuple[tuple[Memory, ...], float]]:
        """`user_id`'s windows best matching `query`, as search ranks turns; see MemoryStore.search_windows."""
        if period is not None and not period:
            return []
        ranked = self._search_index(_WINDOWS, user_id, query, limit, exclude_conversation_id, deadline,
                                    common_share, period)
        if not ranked:
            return []
        ids = [rowid for rowid, _ in ranked]
        # One read for every window's turns: each window's own conversation, its id range.
        columns = ", ".join("m." + c.strip() for c in _COLUMNS.split(","))
        turns: dict[int, list[Memory]] = {}
        for row in self._read(
                f"SELECT w.id, {columns} FROM memory_windows AS w JOIN memories AS m ON m.user_id = w.user_id"
                " AND m.conversation_id = w.conversation_id AND m.id BETWEEN w.first_id AND w.last_id"
                f" WHERE w.id IN ({','.join('?' * len(ids))}) AND w.user_id = ? ORDER BY w.id, m.id",
                [*ids, user_id], deadline):
            turns.setdefault(int(row[0]), []).append(row_to_memory(row[1:]))
        windows = [(tuple(turns[rowid]), score) for rowid, score in ranked if rowid in turns]
        return windows

    def _search_index(self, fts: str, user_id: str, query: str, limit: int, exclude_conversation_id: str | None,
                      deadline: float | None, common_share: float | None,
                      period: Sequence[str] | None) -> list[tuple[int, float]]:
        """(rowid, score) of the rows of index `fts` (turns or windows) best matching `query`, best first."""
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        owner = owner_token(user_id)
        scope = f'owner : "{owner}"'
        if period is not None:
            scope += " AND period : (" + " OR ".join(_quoted(key) for key in period) + ")"
        user_rows = self._user_rows.get(user_id, 0)
        share = user_rows / max(1, self._total_rows)
        # Narrowing by the owner token inside FTS5 walks the owner's whole posting list: cheap
        # for one user among many, ~20 ms for a user who owns 100k rows. A user who owns most
        # of the file is filtered after ranking instead, fetching enough to keep `limit` rows
        # (a period filter is then applied in FTS5 on its own).
        owner_filter = user_rows == 0 or share < _HEAVY_SHARE
        if owner_filter and user_rows and self._total_rows >= USER_RANKING_MIN_ROWS:
            return self._ranked_in_user(fts, user_id, scope, terms, limit, user_rows, exclude_conversation_id,
                                        deadline, None if common_share is None
                                        else max(_COMMON_MIN_ROWS, int(common_share * user_rows)))
        selected = terms
        if user_rows == 0 or user_rows > MAX_RANKED:  # else ranking is bounded by the user's rows anyway
            selected = self._selective_terms(fts, owner if owner_filter else None, terms, deadline)
        if common_share is not None and user_rows and len(selected) > 1:
            selected = self._uncommon_terms(fts, owner if owner_filter else None, selected,
                                            max(_COMMON_MIN_ROWS, int(common_share * user_rows)), deadline)
        filter_ = scope if owner_filter else scope.partition(" AND ")[2]
        rows = self._ranked(fts, user_id, filter_, selected, limit, owner_filter, share, exclude_conversation_id,
                            deadline)
        if not rows and len(selected) < len(terms):
            # The rare words counted over the whole file may all be other users' words: the
            # full query is slower, but still bounded by the deadline.
            rows = self._ranked(fts, user_id, filter_, terms, limit, owner_filter, share, exclude_conversation_id,
                                deadline)
        return [(int(row[0]), -float(row[1])) for row in rows]

    def _ranked_in_user(self, fts: str, user_id: str, scope: str, terms: list[str], limit: int, user_rows: int,
                        exclude_conversation_id: str | None, deadline: float | None,
                        common_most: int | None) -> list[tuple[int, float]]:
        """BM25 over the user's own rows with the user's own statistics, scored here rather than by
        FTS5's bm25() (see search): each term's rows of this user (within `scope`: the owner, and a
        period) are listed (cheap: the owner's posting list is short), the term's IDF comes from
        that count among the user's rows, a row's length from FTS5's docsize table (averaged over
        the matching rows), and a term counts once per row. Terms in more than `common_most` of
        the user's rows are left out, unless all are.
        """
        cap = common_most + 1 if common_most is not None else user_rows + 1
        match = f"SELECT rowid FROM {fts} WHERE {fts} MATCH ?"
        postings: dict[str, list[int]] = {}
        for term in terms:
            rows = self._read(match + " LIMIT ?", (f"{scope} AND text : {_quoted(term)}", cap), deadline)
            if rows:
                postings[term] = [r[0] for r in rows]
        kept = {term: rows for term, rows in postings.items() if len(rows) < cap}
        if not kept and postings:
            # Every word is common for this user: the query is kept whole rather than emptied.
            kept = {term: [r[0] for r in self._read(match, (f"{scope} AND text : {_quoted(term)}",), deadline)]
                    for term in postings}
        excluded: set[int] = set()
        if exclude_conversation_id is not None and kept:
            thread = thread_token(user_id, exclude_conversation_id)
            excluded = {r[0] for r in self._read(match, (f'{scope} AND thread : "{thread}"',), deadline)}
        matched: dict[int, float] = {}
        for rows in kept.values():
            # FTS5's IDF formula, over the user's rows.
            idf = max(1e-6, math.log((user_rows - len(rows) + 0.5) / (len(rows) + 0.5)))
            for rowid in rows:
                if rowid not in excluded:
                    matched[rowid] = matched.get(rowid, 0.0) + idf
        if not matched:
            return []
        lengths: dict[int, int] = {}
        ids = list(matched)
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            for rowid, size in self._read(f"SELECT id, sz FROM {fts}_docsize WHERE id IN"
                                          f" ({','.join('?' * len(chunk))})", chunk, deadline):
                lengths[rowid] = _varint(size)  # the text column's token count comes first
        average = max(1.0, sum(lengths.values()) / max(1, len(lengths)))

        def score(rowid: int) -> float:
            norm = 1 - _BM25_B + _BM25_B * lengths.get(rowid, average) / average
            return matched[rowid] * (_BM25_K1 + 1) / (1 + _BM25_K1 * norm)

        best = sorted(matched, key=lambda rowid: (-score(rowid), rowid))[:limit]
        return [(rowid, score(rowid)) for rowid in best]

    def _ranked(self, fts: str, user_id: str, filter_: str, terms: list[str], limit: int, owner_filter: bool,
                share: float, exclude_conversation_id: str | None, deadline: float | None) -> builtins.list[Any]:
        """(rowid, rank) rows of `user_id` ranked by FTS5's bm25(), best first; `filter_` narrows
        inside FTS5 (the owner token, unless the user owns most of the file; a period)."""
        if not terms:
            return []
        expression = f'text : ({" OR ".join(_quoted(term) for term in terms)})'
        fetch = limit
        if not owner_filter:
            fetch = min(_MAX_FETCH, int(limit / share * 1.5) + 10)
        if filter_:
            expression = f"{filter_} AND {expression}"
        if exclude_conversation_id is not None:
            expression += f' NOT thread : "{thread_token(user_id, exclude_conversation_id)}"'
        # The inner query is FTS5 alone (its ORDER BY rank LIMIT is done inside FTS5); the
        # join reads only the rows kept, and checks the owner by its real id.
        sql = (f"SELECT m.id, f.rank FROM (SELECT rowid, rank FROM {fts} WHERE {fts} MATCH ?"
               f" ORDER BY rank LIMIT ?) AS f JOIN {_CONTENT[fts]} AS m ON m.id = f.rowid"
               " WHERE m.user_id = ? ORDER BY f.rank LIMIT ?")
        return self._read(sql, (expression, fetch, user_id, limit), deadline)

    def _selective_terms(self, fts: str, owner: str | None, terms: list[str], deadline: float | None) -> list[str]:
        """The query's rarer terms, so that BM25 ranks at most about MAX_RANKED rows.

        A word found in most of a heavy user's 100k memories makes ranking slow and carries
        almost no weight in BM25 anyway. Counting a term's rows (capped) is cheap, so the words
        are kept rarest first while their matches add up to MAX_RANKED; the rarest one is always
        kept; words with no match are dropped. Counts are over the whole file first (an upper
        bound), then, with `owner`, over that user's rows when the first count is over the cap.
        """
        if len(terms) == 1:
            return terms
        counted = []
        for term in terms:
            count = self._count_matches(fts, f"text : {_quoted(term)}", deadline)
            if count > MAX_RANKED and owner is not None:
                count = self._count_matches(fts, f'owner : "{owner}" AND text : {_quoted(term)}', deadline)
            if count:
                counted.append((count, term))
        counted.sort()
        kept: list[str] = []
        total = 0
        for count, term in counted:
            if kept and total + count > MAX_RANKED:
                break
            kept.append(term)
            total += count
        return kept

    def _uncommon_terms(self, fts: str, owner: str | None, terms: list[str], most: int,
                        deadline: float | None) -> list[str]:
        kept = []
        for term in terms:
            expression = f"text : {_quoted(term)}"
            if owner is not None:
                expression = f'owner : "{owner}" AND {expression}'
            if self._count_matches(fts, expression, deadline, cap=most + 1) <= most:
                kept.append(term)
        return kept or terms

    def _count_matches(self, fts: str, expression: str, deadline: float | None, cap: int = MAX_RANKED + 1) -> int:
        rows = self._read(f"SELECT count(*) FROM (SELECT 1 FROM {fts} WHERE {fts} MATCH ? LIMIT ?)",
                          (expression, cap), deadline)
        return int(rows[0][0])

    def neighbours(self, memory: Memory, before: int, after: int, *,
                   deadline: float | None = None) -> list[Memory]:
        """Up to `before` earlier and `after` later turns of the memory's conversation, in order, itself included."""
        earlier = self._read(
            f"SELECT {_COLUMNS} FROM memories WHERE user_id = ? AND conversation_id = ? AND id < ?"
            " ORDER BY id DESC LIMIT ?", (memory.user_id, memory.conversation_id, memory.id, before), deadline)
        later = self._read(
            f"SELECT {_COLUMNS} FROM memories WHERE user_id = ? AND conversation_id = ? AND id > ?"
            " ORDER BY id LIMIT ?", (memory.user_id, memory.conversation_id, memory.id, after), deadline)
        return [row_to_memory(r) for r in reversed(earlier)] + [memory] + [row_to_memory(r) for r in later]

    def list(self, user_id: str, q: str | None = None, conversation_id: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[int, list[Memory]]:
        """(total, page) of `user_id`'s memories: newest first, or best match first when `q` is given."""
        where, args = ["m.user_id = ?"], [user_id]
        if conversation_id is not None:
            where.append("m.conversation_id = ?")
            args.append(conversation_id)
        match = fts_query(q) if q else None
        if q and match is None:
            return 0, []
        if match is not None:
            source = "memories_fts AS f JOIN memories AS m ON m.id = f.rowid"
            where.insert(0, "memories_fts MATCH ?")
            args.insert(0, f'owner : "{owner_token(user_id)}" AND text : ({match})')
            order = "f.rank"
        else:
            source, order = "memories AS m", "m.id DESC"
        condition = " AND ".join(where)
        total = int(self._read(f"SELECT count(*) FROM {source} WHERE {condition}", args)[0][0])
        columns = ", ".join("m." + c.strip() for c in _COLUMNS.split(","))
        rows = self._read(f"SELECT {columns} FROM {source} WHERE {condition} ORDER BY {order}"
                          " LIMIT ? OFFSET ?", [*args, max(0, limit), max(0, offset)])
        return total, [row_to_memory(r) for r in rows]

    def get(self, memory_id: int) -> Memory | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,))
        return row_to_memory(rows[0]) if rows else None

    def export_jsonl(self, user_id: str | None = None) -> Iterator[str]:
        """One JSON line (no newline) per memory, oldest first; read page by page, never all at once."""

        def page_after(last_id: int) -> builtins.list[Any]:
            if user_id is None:
                return self._read(f"SELECT {_COLUMNS} FROM memories WHERE id > ? ORDER BY id LIMIT ?",
                                  (last_id, EXPORT_PAGE))
            return self._read(f"SELECT {_COLUMNS} FROM memories WHERE user_id = ? AND id > ?"
                              " ORDER BY id LIMIT ?", (user_id, last_id, EXPORT_PAGE))

        return exported_lines(page_after)

    def recall_blocks(self, user_id: str, turn_keys: Sequence[bytes], *,
                      deadline: float | None = None) -> dict[bytes, tuple[BlockLine, ...]]:
        """The kept blocks of these turns of `user_id`, as lines in order; a turn with no kept block
        is absent, one whose memories were all deleted maps to ()."""
        found: dict[bytes, list[BlockLine]] = {}
        keys = list(dict.fromkeys(turn_keys))
        for start in range(0, len(keys), _ID_CHUNK):
            chunk = keys[start:start + _ID_CHUNK]
            rows = self._read(
                "SELECT b.turn_key, l.memory_id, l.run, l.date, l.body FROM recall_blocks AS b"
                " LEFT JOIN recall_block_lines AS l ON l.block_id = b.id"
                f" WHERE b.user_id = ? AND b.turn_key IN ({','.join('?' * len(chunk))})"
                " ORDER BY b.id, l.position", [user_id, *chunk], deadline)
            for key, memory_id, run, date, body in rows:
                lines = found.setdefault(bytes(key), [])
                if memory_id is not None:
                    lines.append(BlockLine(int(memory_id), int(run), date, body))
        return {key: tuple(lines) for key, lines in found.items()}

    def has_memories(self, user_id: str) -> bool:
        """Whether the user has any memory, from the counts this process keeps (no query): a
        user with none needs no search, so their calls skip the recall thread entirely."""
        return self._user_rows.get(user_id, 0) > 0

    def counts(self) -> dict[str, int]:
        row = self._read("SELECT count(*), count(DISTINCT user_id) FROM memories")[0]
        return {"memories": int(row[0]), "users": int(row[1])}

    def users(self) -> builtins.list[tuple[str, int]]:
        rows = self._read("SELECT user_id, count(*) FROM memories GROUP BY user_id ORDER BY user_id")
        return [(r[0], int(r[1])) for r in rows]

    def close(self) -> None:
        if self._closed:
            return
        with self._readers_lock:
            self._closed = True
            readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.close()
        self._warmer.join(_CLOSE_WAIT_S)  # interrupted by its progress handler within a moment
        with self._write_lock:
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # closing still releases the file; the WAL is replayed on next open
            self._writer.close()


def _varint(data: bytes) -> int:
    """The first SQLite varint of `data` (big-endian groups of 7 bits, high bit set on all but the last)."""
    value = 0
    for byte in data[:9]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return value


def _create_private_file(path: Path) -> None:
    """Creates the file 0600 before SQLite does (SQLite gives -wal/-shm the same mode).

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock the process holds on it, so the open connections' WAL locks would go, and the next
    process to close its own connection would take itself for the last one and delete the WAL
    these connections still write to.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    os.chmod(path, 0o600)  # memories are private even if the file was made by someone else first


class _Reader:
    """One thread's read connection."""

    __slots__ = ("conn", "lock", "thread")

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock,
                 thread: weakref.ref[threading.Thread]) -> None:
        self.conn, self.lock, self.thread = conn, lock, thread

    def ended(self) -> bool:
        thread = self.thread()
        return thread is None or not thread.is_alive()

    def close(self) -> None:
        """Closes the connection once no read is using it (a read still running after
        _CLOSE_WAIT_S is interrupted; the store is marked closed, so no new read starts)."""
        if not self.lock.acquire(timeout=_CLOSE_WAIT_S):
            self.conn.interrupt()
            self.lock.acquire()
        try:
            self.conn.close()
        finally:
            self.lock.release()


class _CorruptStore(sqlite3.DatabaseError):
    """quick_check found damage."""


_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _is_corruption(error: sqlite3.DatabaseError) -> bool:
    """Damage to the file, as opposed to a lock, a permission or a full disk (which must not move it)."""
    if isinstance(error, _CorruptStore):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(error)
    return "not a database" in text or "malformed" in text


__all__ = ["STOPWORDS", "MemoryStore", "MemoryStoreError", "SQLiteMemoryStore", "fts_query", "query_terms"]
