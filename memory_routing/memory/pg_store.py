"""The MemoryStore of a fleet: memories and recall blocks in PostgreSQL (fleet/migrations/002_memories.sql).

Every proxy of the fleet reads and writes the same rows, so a memory told through one proxy is
recalled through any other. Connections come from the proxy's FleetDatabase pool; a database that
is down, not migrated yet or out of connections raises SharedServerUnavailable (the recall gives
up at once, the writer holds its turns until the database is back).

Search: PostgreSQL's full-text search narrows, BM25 ranks. The GIN index over `tsv` finds one
user's rows holding a word (the owner's lexeme ANDed into every query: one index for every user).
Each query word's rows among the user's come from the counts the triggers keep (memory_term_rows),
words in more than `common_share` of the user's rows are left out as SQLiteMemoryStore does, the
rarest words are kept while their rows add up to MAX_RANKED, and only those rows are read and
scored, in the same statement: BM25 with the user's own statistics, the formula of
SQLiteMemoryStore._ranked_in_user (bm25_order here). ts_rank_cd ranks every matching row of the
user (127/260 ms p50/p95 for a user owning 50k rows who asks with common words) and weighs no word
by its rarity. Measured: bench/pg_recall.py, docs/deploy.md "Memory in PostgreSQL".

Windows (memory/windows.py) are rows of memory_windows (fleet/migrations/004_memory_windows.sql),
made and deleted by triggers on memories in the writes' own transactions, and searched the same
way with their own per-user counts; a period narrows inside the same GIN index (each window's
period keys are lexemes of its tsv, as the owner is).

Every read with a deadline runs in a transaction with ``SET LOCAL statement_timeout`` set to
what is left of it, sent with the query in one round trip (pipeline mode); a query cancelled at
its deadline raises MemoryTimeoutError, as a late SQLite read does.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from memory_routing.errors import SharedServerUnavailable
from memory_routing.fleet.health import DATABASE
from memory_routing.fleet.postgres import FleetDatabase

from .records import (BlockLine, KeptBlock, Memory, MemoryStoreClosedError, MemoryTimeoutError,
                      NewMemory, memories_of_lines)
from .store import EXPORT_PAGE, MAX_RANKED, exported_lines, query_terms, row_to_memory, text_sha

log = logging.getLogger(__name__)

_COLUMNS = "id, user_id, conversation_id, client, model, role, text, created_at"
_TEXT_SEARCH_CONFIG = "english"
# ASCII punctuation splits words, as SQLite's unicode61 tokenizer does ("example.com", "3.5",
# "e-mail" are two words each, as query_terms reads them).
_DOCUMENT = "to_tsvector('english', regexp_replace(%s, '[[:punct:]]+', ' ', 'g'))"
_WORD = re.compile(r"\w+", re.UNICODE)
_BM25_K1, _BM25_B = 1.2, 0.75
_COMMON_MIN_ROWS = 10  # as SQLiteMemoryStore: a word is never common in fewer rows than this
# Rows a search reads and scores at most: the selected words add up to MAX_RANKED rows, except
# when every word is common (then the rarest one is ranked, in its first rows).
_MAX_CANDIDATES = 2 * MAX_RANKED
_AROUND = 2  # turns read each side of a search's hits (the recall shows 1 before, 2 after)
# The best hits whose turns around are read with them: as many as the recall turns into runs at
# most (RecallTuning.expand); it asks for later ones' neighbours itself.
_AROUND_HITS = 30
AROUND_TTL_S = 1.0  # how long they serve the thread's neighbours() calls
WRITE_WAIT_S = 5.0  # how long a write (the writer thread, the management API) waits for a connection
INFO_DEADLINE_S = 1.0  # counts for /memory-routing/info
PRESENCE_REFRESH_S = 5.0  # how often the users who have memories are read again (other proxies write too)
_PRESENCE_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class _Index:
    """A searched table and the per-user counts its triggers keep (002 for turns, 004 for windows)."""

    table: str
    user_rows: str
    term_rows: str


_TURNS = _Index("memories", "memory_user_rows", "memory_term_rows")
_WINDOWS = _Index("memory_windows", "memory_window_user_rows", "memory_window_term_rows")


def owner_lexeme(user_id: str) -> str:
    """The lexeme naming the owner in `tsv`: it holds a space, so no word of any text can equal it."""
    return "owner " + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _tsquery_lexeme(lexeme: str) -> str:
    """A lexeme as tsquery input: quoted, quotes and backslashes escaped."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def bm25_order(matched: dict[int, float], lengths: dict[int, int]) -> list[tuple[int, float]]:
    """(row id, score) best first, ties by id: `matched` maps a row to the summed IDF of the words
    it holds (each counted once), `lengths` its word count; the average is over the matched rows,
    as SQLiteMemoryStore._ranked_in_user computes it."""
    average = max(1.0, sum(lengths.values()) / max(1, len(lengths)))

    def score(row_id: int) -> float:
        norm = 1 - _BM25_B + _BM25_B * lengths.get(row_id, average) / average
        return matched[row_id] * (_BM25_K1 + 1) / (1 + _BM25_K1 * norm)

    scored = [(row_id, score(row_id)) for row_id in matched]
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored


def _idf(user_rows: int, rows: int) -> float:
    return max(1e-6, math.log((user_rows - rows + 0.5) / (rows + 0.5)))


class _Reads:
    """One connection's reads inside one transaction (see PostgresMemoryStore._reads).

    The transaction is opened with the first statement: BEGIN, the statement timeout and the
    query go in one round trip (pipeline mode), as a lone read's COMMIT goes with it too.
    """

    def __init__(self, conn: psycopg.Connection, deadline: float | None) -> None:
        self.conn = conn
        self.deadline = deadline
        self.begun = False

    def rows(self, sql: str, args: Sequence[Any] | dict[str, Any] = (), *,
             last: bool = False) -> builtins.list[tuple[Any, ...]]:
        """The statement's rows; `last`: COMMIT in the same round trip (no statement follows)."""
        conn = self.conn
        left_ms = None
        if self.deadline is not None:
            left_ms = int((self.deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                raise MemoryTimeoutError("memory read: the deadline had passed before it started")
        with conn.pipeline():
            if not self.begun:
                conn.execute("BEGIN READ ONLY")
                self.begun = True
            if left_ms is not None:
                conn.execute(f"SET LOCAL statement_timeout = {left_ms}")
            cursor = conn.execute(sql, args)
            if last:
                conn.execute("COMMIT")
                self.begun = False
        return cursor.fetchall()

    def end(self, failed: bool) -> None:
        if self.begun:
            self.begun = False
            self.conn.execute("ROLLBACK" if failed else "COMMIT")


class PostgresMemoryStore:
    """MemoryStore in the fleet's PostgreSQL (see the module's docstring)."""

    def __init__(self, database: FleetDatabase, *, presence_refresh_s: float = PRESENCE_REFRESH_S) -> None:
        self.database = database
        # Every read is a network round trip: the memory addon runs them in its recall threads,
        # never on mitmproxy's event loop (the SQLite store's reads are local and short).
        self.remote = True
        self.recovery = None  # the SQLite store's damaged-file report; a database is never moved aside
        self._closed = threading.Event()
        self._lock = threading.Lock()
        # The users who have memories, read from the database every presence_refresh_s (and
        # added to by this proxy's writes): has_memories answers from it without a query, on
        # the event loop. Until the first read succeeds every user may have memories.
        self._present: set[str] = set()
        self.presence_loaded = threading.Event()
        self._presence_refresh_s = presence_refresh_s
        self._local = threading.local()  # a thread's last search's turns around its hits (see _around)
        self._presence = threading.Thread(target=self._refresh_presence, name="memory-pg-presence", daemon=True)
        self._presence.start()

    # --- connections -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise MemoryStoreClosedError("memory store (PostgreSQL) is closed")

    @contextmanager
    def _reads(self, deadline: float | None) -> Iterator[_Reads]:
        """A connection in a read transaction; with a deadline (time.monotonic() seconds), every
        statement is bounded by what is left of it (a cancelled one raises MemoryTimeoutError)."""
        self._check_open()
        if deadline is not None and self.database.health.is_degraded(DATABASE):
            # A recall gives up at once while the database is known to be away; the writer's
            # retries and the presence refresh (no deadline) find it back.
            raise SharedServerUnavailable("the fleet database is away: recall skipped")
        wait = WRITE_WAIT_S if deadline is None else deadline - time.monotonic()
        if wait <= 0:
            raise MemoryTimeoutError("memory read: the deadline had passed before it started")
        with self.database.connection(timeout=wait) as conn:
            reads = _Reads(conn, deadline)
            try:
                yield reads
            except psycopg.errors.QueryCanceled as e:
                reads.end(failed=True)
                raise MemoryTimeoutError("memory read: cancelled at its deadline") from e
            except BaseException:
                if not conn.closed:
                    reads.end(failed=True)
                raise
            reads.end(failed=False)

    def _read(self, sql: str, args: Sequence[Any] | dict[str, Any] = (),
              deadline: float | None = None) -> builtins.list[tuple[Any, ...]]:
        with self._reads(deadline) as reads:
            return reads.rows(sql, args, last=True)

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Connection]:
        self._check_open()
        with self.database.connection(timeout=WRITE_WAIT_S) as conn, conn.transaction():
            yield conn

    # --- who has memories --------------------------------------------------------------------

    def _refresh_presence(self) -> None:
        while not self._closed.is_set():
            try:
                self.refresh_presence()
            except (SharedServerUnavailable, MemoryStoreClosedError, psycopg.Error):
                wait = _PRESENCE_RETRY_S if not self.presence_loaded.is_set() else self._presence_refresh_s
            else:
                wait = self._presence_refresh_s
            self._closed.wait(wait)

    def refresh_presence(self) -> None:
        """Reads which users have memories (the triggers' memory_user_rows)."""
        rows = self._read("SELECT user_id FROM memory_user_rows")
        with self._lock:
            self._present = {row[0] for row in rows}
        self.presence_loaded.set()

    def has_memories(self, user_id: str) -> bool:
        """Whether the user may have memories, without a query (it runs on the event loop): from
        the users read every few seconds and this proxy's own writes. Before the first read, and
        while the database is away, every user may: the search decides (and fails fast)."""
        if not self.presence_loaded.is_set():
            return True
        return user_id in self._present

    # --- writes ------------------------------------------------------------------------------

    def add_many(self, memories: Sequence[NewMemory]) -> list[int]:
        """Stores the memories in one transaction; returns one id per input. The same (user,
        conversation, role, text) is stored once: a repeat (here or through another proxy) gets the
        first one's id."""
        return self._add_many(memories)[0]

    def _add_many(self, memories: Sequence[NewMemory]) -> tuple[list[int], int]:
        if not memories:
            return [], 0
        shas = [text_sha(m.text) for m in memories]
        keys = [(m.user_id, m.conversation_id, m.role, sha) for m, sha in zip(memories, shas, strict=True)]
        columns: dict[str, list[Any]] = {
            "user_id": [m.user_id for m in memories], "conversation_id": [m.conversation_id for m in memories],
            "client": [m.client for m in memories], "model": [m.model for m in memories],
            "role": [m.role for m in memories], "text": [m.text for m in memories],
            "created_at": [float(m.created_at) for m in memories], "text_sha": shas,
            "words": [len(_WORD.findall(m.text)) for m in memories],
            "owner": [owner_lexeme(m.user_id) for m in memories],
        }
        with self._writing() as conn:
            inserted = conn.execute(
                "INSERT INTO memories (user_id, conversation_id, client, model, role, text, created_at, text_sha,"
                " words, tsv) SELECT r.user_id, r.conversation_id, r.client, r.model, r.role, r.text, r.created_at,"
                f" r.text_sha, r.words, {_DOCUMENT % 'r.text'} || array_to_tsvector(ARRAY[r.owner])"
                " FROM unnest(%(user_id)s::text[], %(conversation_id)s::text[], %(client)s::text[], %(model)s::text[],"
                " %(role)s::text[], %(text)s::text[], %(created_at)s::float8[], %(text_sha)s::bytea[],"
                " %(words)s::int[], %(owner)s::text[]) WITH ORDINALITY AS r(user_id, conversation_id, client, model,"
                " role, text, created_at, text_sha, words, owner, n) ORDER BY r.n"
                " ON CONFLICT (user_id, conversation_id, role, text_sha) DO NOTHING"
                " RETURNING id, user_id, conversation_id, role, text_sha", columns).fetchall()
            ids = {(r[1], r[2], r[3], bytes(r[4])): int(r[0]) for r in inserted}
            missing = [key for key in dict.fromkeys(keys) if key not in ids]
            if missing:
                for r in conn.execute(
                        "SELECT m.id, m.user_id, m.conversation_id, m.role, m.text_sha FROM memories AS m"
                        " JOIN unnest(%s::text[], %s::text[], %s::text[], %s::bytea[]) AS k(u, c, r, s)"
                        " ON m.user_id = k.u AND m.conversation_id = k.c AND m.role = k.r AND m.text_sha = k.s",
                        [[k[i] for k in missing] for i in range(4)]).fetchall():
                    ids[(r[1], r[2], r[3], bytes(r[4]))] = int(r[0])
        with self._lock:
            self._present.update(m.user_id for m in memories)
        return [ids[key] for key in keys], len(inserted)

    def delete(self, memory_id: int, user_id: str | None = None) -> bool:
        """Deletes one memory (only if it is `user_id`'s, when given), and every kept block line
        that showed it; True when one was deleted."""
        sql = "DELETE FROM memories WHERE id = %s"
        args: list[Any] = [memory_id]
        if user_id is not None:
            sql += " AND user_id = %s"
            args.append(user_id)
        with self._writing() as conn:
            row = conn.execute(sql + " RETURNING user_id", args).fetchone()
            left = row is not None and conn.execute(
                "SELECT EXISTS (SELECT 1 FROM memories WHERE user_id = %s)", (row[0],)).fetchone() == (True,)
        if row is None:
            return False
        if not left:
            with self._lock:
                self._present.discard(row[0])
        return True

    def forget_user(self, user_id: str) -> int:
        """Deletes every memory and kept block of `user_id`; returns how many memories."""
        with self._writing() as conn:
            deleted = conn.execute("DELETE FROM memories WHERE user_id = %s", (user_id,)).rowcount
            conn.execute("DELETE FROM recall_blocks WHERE user_id = %s", (user_id,))
        with self._lock:
            self._present.discard(user_id)
        return max(0, deleted)

    def delete_older_than(self, cutoff: float) -> int:
        """Deletes every memory and kept block created before `cutoff` (epoch seconds); returns how
        many memories. The retention (memory.retention_days) calls it."""
        with self._writing() as conn:
            deleted = conn.execute("DELETE FROM memories WHERE created_at < %s", (float(cutoff),)).rowcount
            conn.execute("DELETE FROM recall_blocks WHERE created_at < %s", (float(cutoff),))
        if deleted:
            self.refresh_presence()
        return max(0, deleted)

    def save_recall_blocks(self, blocks: Sequence[KeptBlock]) -> int:
        """Keeps turns' recall blocks in one transaction; returns how many were new. The first
        block kept for a (user, turn key) stays; a line whose memory is gone is left out."""
        saved = 0
        with self._writing() as conn:
            for block in blocks:
                row = conn.execute(
                    "INSERT INTO recall_blocks (user_id, turn_key, created_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (user_id, turn_key) DO NOTHING RETURNING id",
                    (block.user_id, block.turn_key, float(block.created_at))).fetchone()
                if row is None:
                    continue
                saved += 1
                if not block.lines:
                    continue
                # FOR KEY SHARE: a memory deleted meanwhile by another proxy cannot slip in between.
                live = {r[0] for r in conn.execute(
                    "SELECT id FROM memories WHERE user_id = %s AND id = ANY(%s) FOR KEY SHARE",
                    (block.user_id, [line.memory_id for line in block.lines])).fetchall()}
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO recall_block_lines (block_id, position, memory_id, run, date, body)"
                        " VALUES (%s, %s, %s, %s, %s, %s)",
                        [(row[0], position, line.memory_id, line.run, line.date, line.body)
                         for position, line in enumerate(block.lines) if line.memory_id in live])
        return saved

    def import_jsonl(self, lines: Iterable[str]) -> int:
        """Adds the memories of exported lines (new ids, their created_at kept; repeats skipped);
        returns how many were new. A bad line raises MemoryRecordError naming its line number,
        and nothing is imported."""
        self._check_open()
        return self._add_many(memories_of_lines(lines))[1]

    # --- search ------------------------------------------------------------------------------

    def search(self, user_id: str, query: str, limit: int = 10, *,
               exclude_conversation_id: str | None = None,
               deadline: float | None = None,
               common_share: float | None = None) -> list[tuple[Memory, float]]:
        """`user_id`'s memories best matching `query` (BM25 over the user's own rows, higher is
        better); never another user's. Words in more than `common_share` of the user's rows are
        left out unless every word is; a late search raises MemoryTimeoutError."""
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        owner = _tsquery_lexeme(owner_lexeme(user_id))
        with self._reads(deadline) as reads:
            user_rows, selected = self._selected(reads, _TURNS, user_id, terms, common_share)
            if not selected:
                return []
            return self._ranked_hits(reads, owner, user_id, selected, user_rows, exclude_conversation_id, limit)

    def search_windows(self, user_id: str, query: str, limit: int = 10, *,
                       exclude_conversation_id: str | None = None,
                       deadline: float | None = None,
                       common_share: float | None = None,
                       period: Sequence[str] | None = None) -> list[tuple[tuple[Memory, ...], float]]:
        """`user_id`'s windows best matching `query`, as search ranks turns (BM25 with the user's
        window statistics: memory_window_term_rows); see MemoryStore.search_windows. With
        `period`, only windows holding one of its 'period <key>' lexemes (004_memory_windows.sql)."""
        terms = query_terms(query)
        if not terms or limit <= 0 or (period is not None and not period):
            return []
        narrowed = _tsquery_lexeme(owner_lexeme(user_id))
        if period is not None:
            narrowed += " & (" + " | ".join(_tsquery_lexeme("period " + key) for key in period) + ")"
        with self._reads(deadline) as reads:
            user_rows, selected = self._selected(reads, _WINDOWS, user_id, terms, common_share)
            if not selected:
                return []
            best, args = _best_sql(_WINDOWS, narrowed, user_id, selected, user_rows, exclude_conversation_id, limit)
            columns = ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(","))
            # Each window's turns: its own conversation, its id range.
            rows = reads.rows(
                f"WITH {best} SELECT h.n, h.score, {columns} FROM best AS h JOIN memory_windows AS w ON w.id = h.id"
                " JOIN memories AS m ON m.user_id = w.user_id AND m.conversation_id = w.conversation_id"
                " AND m.id BETWEEN w.first_id AND w.last_id ORDER BY h.n, m.id", args, last=True)
        windows: dict[int, tuple[list[Memory], float]] = {}
        for row in rows:
            windows.setdefault(int(row[0]), ([], float(row[1])))[0].append(row_to_memory(row[2:]))
        return [(tuple(turns), score) for _, (turns, score) in sorted(windows.items())]

    def _selected(self, reads: _Reads, index: _Index, user_id: str, terms: Sequence[str],
                  common_share: float | None) -> tuple[int, list[tuple[str, int, str]]]:
        """(the user's rows in `index`, the words to rank with: _counted's items). Words in more than
        common_share of the user's rows are left out, unless all are; then the rarest first while
        their rows add up to MAX_RANKED (the rarest always)."""
        user_rows, counted = self._counted(reads, user_id, terms, index)
        common_most = None if common_share is None else max(_COMMON_MIN_ROWS, int(common_share * user_rows))
        return user_rows, _rarest([c for c in counted if common_most is None or c[1] <= common_most]) or _rarest(counted)

    def _ranked_hits(self, reads: _Reads, owner: str, user_id: str, selected: Sequence[tuple[str, int, str]],
                     user_rows: int, exclude_conversation_id: str | None, limit: int) -> list[tuple[Memory, float]]:
        """The best `limit` of the user's rows holding the selected words, scored by BM25 (the
        formula of bm25_order) in the database, so that only the hits travel. One statement: the
        candidates (_MAX_CANDIDATES at most), their scores, the best, their rows, and the best
        _AROUND_HITS hits' turns around them (_AROUND each side), kept for this thread's next
        neighbours() calls: the recall asks for them next, and one query costs less than a round
        trip per hit."""
        best, args = _best_sql(_TURNS, owner, user_id, selected, user_rows, exclude_conversation_id, limit)
        args |= {"around": _AROUND, "hits": _AROUND_HITS}
        columns = ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(","))
        rows = reads.rows(
            f"WITH {best} SELECT h.n, h.score, x.* FROM best AS h JOIN memories AS c ON c.id = h.id CROSS JOIN LATERAL ("
            f" SELECT 0 AS side, {columns} FROM memories AS m WHERE m.id = c.id"
            f" UNION ALL (SELECT -1, {columns} FROM memories AS m WHERE h.n <= %(hits)s AND m.user_id = c.user_id"
            "  AND m.conversation_id = c.conversation_id AND m.id < c.id ORDER BY m.id DESC LIMIT %(around)s)"
            f" UNION ALL (SELECT 1, {columns} FROM memories AS m WHERE h.n <= %(hits)s AND m.user_id = c.user_id"
            "  AND m.conversation_id = c.conversation_id AND m.id > c.id ORDER BY m.id LIMIT %(around)s)) AS x",
            args, last=True)
        hits: dict[int, tuple[Memory, float]] = {}  # rank -> (hit, score)
        sides: dict[int, tuple[list[Memory], list[Memory]]] = {}  # rank -> (earlier, later)
        for row in rows:
            rank, score, side, memory = int(row[0]), float(row[1]), int(row[2]), row_to_memory(row[3:])
            if side == 0:
                hits[rank] = (memory, score)
            else:
                sides.setdefault(rank, ([], []))[0 if side < 0 else 1].append(memory)
        around: dict[int, tuple[list[Memory], list[Memory]]] = {}
        for rank, (hit, _) in hits.items():
            if rank <= _AROUND_HITS:
                earlier, later = sides.get(rank, ([], []))
                around[hit.id] = (sorted(earlier, key=lambda m: m.id), sorted(later, key=lambda m: m.id))
        self._local.around = (time.monotonic(), around)
        return [hits[rank] for rank in sorted(hits)]

    @staticmethod
    def _counted(reads: _Reads, user_id: str, terms: Sequence[str],
                 index: _Index) -> tuple[int, list[tuple[str, int, str]]]:
        """(the user's rows, [(word, the user's rows holding it, its tsquery)] for the words with
        rows, in query order), from the counts the triggers keep (one index lookup a word). A word
        the parser splits in several lexemes counts as its rarest one's rows (an upper bound)."""
        rows = reads.rows(
            f"SELECT (SELECT rows FROM {index.user_rows} WHERE user_id = %(user)s), w.term, q::text,"
            " (SELECT min(coalesce(t.rows, 0)) FROM unnest(tsvector_to_array("
            f"{_DOCUMENT % 'w.term'})) AS l(lexeme)"
            f"  LEFT JOIN {index.term_rows} AS t ON t.user_id = %(user)s AND t.lexeme = l.lexeme)"
            " FROM unnest(%(terms)s::text[]) WITH ORDINALITY AS w(term, n),"
            f" LATERAL plainto_tsquery('{_TEXT_SEARCH_CONFIG}', regexp_replace(w.term, '[[:punct:]]+', ' ', 'g')) AS q"
            " WHERE numnode(q) > 0 ORDER BY w.n",
            {"user": user_id, "terms": list(terms)})
        user_rows = int(rows[0][0] or 0) if rows else 0
        return user_rows, [(term, int(count), tsquery) for _, term, tsquery, count in rows if count]

    @staticmethod
    def _candidates(reads: _Reads, owner: str, user_id: str, selected: Sequence[tuple[str, int, str]],
                    user_rows: int, exclude_conversation_id: str | None,
                    most: int | None = None) -> tuple[dict[int, float], dict[int, int]]:
        """(row -> summed IDF of the selected words it holds, row -> its word count) for the user's
        rows; with `most`, at most that many rows (in the table's order: no sort of every match)."""
        queries = [tsquery for _, _, tsquery in selected]
        # Which words a row holds: one inline test per word (a subquery per row costs several times more).
        held = ", ".join(f"m.tsv @@ %(q{n})s::tsquery" for n in range(len(queries)))
        sql = (f"SELECT m.id, m.words, ARRAY[{held}]"
               " FROM memories AS m WHERE m.tsv @@ %(query)s::tsquery AND m.user_id = %(user)s")
        args: dict[str, Any] = {f"q{n}": q for n, q in enumerate(queries)}
        args |= {"user": user_id, "query": f"{owner} & (" + " | ".join(f"({q})" for q in queries) + ")"}
        if exclude_conversation_id is not None:
            sql += " AND m.conversation_id <> %(conversation)s"
            args["conversation"] = exclude_conversation_id
        if most is not None:
            sql += " LIMIT %(most)s"
            args["most"] = most
        idf = [_idf(user_rows, count) for _, count, _ in selected]
        matched: dict[int, float] = {}
        lengths: dict[int, int] = {}
        for row_id, words, holds in reads.rows(sql, args):
            matched[int(row_id)] = sum(weight for weight, hold in zip(idf, holds, strict=True) if hold)
            lengths[int(row_id)] = int(words)
        return matched, lengths

    # --- other reads -------------------------------------------------------------------------

    def neighbours(self, memory: Memory, before: int, after: int, *,
                   deadline: float | None = None) -> list[Memory]:
        """Up to `before` earlier and `after` later turns of the memory's conversation, in order, itself included."""
        kept = self._around(memory, before, after)
        if kept is not None:
            return kept
        rows = self._read(
            f"(SELECT {_COLUMNS} FROM memories WHERE user_id = %(u)s AND conversation_id = %(c)s AND id < %(id)s"
            " ORDER BY id DESC LIMIT %(before)s) UNION ALL"
            f" (SELECT {_COLUMNS} FROM memories WHERE user_id = %(u)s AND conversation_id = %(c)s AND id > %(id)s"
            " ORDER BY id LIMIT %(after)s)",
            {"u": memory.user_id, "c": memory.conversation_id, "id": memory.id,
             "before": max(0, before), "after": max(0, after)}, deadline)
        found = [row_to_memory(r) for r in rows]
        earlier = sorted((m for m in found if m.id < memory.id), key=lambda m: m.id)
        later = sorted((m for m in found if m.id > memory.id), key=lambda m: m.id)
        return [*earlier, memory, *later]

    def _around(self, memory: Memory, before: int, after: int) -> list[Memory] | None:
        """neighbours() from this thread's last search, when it read far enough around the hit."""
        kept = getattr(self._local, "around", None)
        if kept is None or time.monotonic() - kept[0] > AROUND_TTL_S or memory.id not in kept[1]:
            return None
        earlier, later = kept[1][memory.id]
        # Fewer than _AROUND on a side: the conversation has no more turns there.
        if (before > len(earlier) == _AROUND) or (after > len(later) == _AROUND):
            return None
        return [*(earlier[-before:] if before > 0 else []), memory, *later[:max(0, after)]]

    def list(self, user_id: str, q: str | None = None, conversation_id: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[int, list[Memory]]:
        """(total, page) of `user_id`'s memories: newest first, or best match first (BM25 over
        the user's rows, every word of `q`) when `q` is given."""
        limit, offset = max(0, limit), max(0, offset)
        where, args = "user_id = %s", [user_id]
        if conversation_id is not None:
            where += " AND conversation_id = %s"
            args.append(conversation_id)
        if not q:
            with self._reads(None) as reads:
                total = int(reads.rows(f"SELECT count(*) FROM memories WHERE {where}", args)[0][0])
                rows = reads.rows(f"SELECT {_COLUMNS} FROM memories WHERE {where} ORDER BY id DESC"
                                  " LIMIT %s OFFSET %s", [*args, limit, offset])
            return total, [row_to_memory(r) for r in rows]
        terms = query_terms(q)
        if not terms:
            return 0, []
        owner = _tsquery_lexeme(owner_lexeme(user_id))
        with self._reads(None) as reads:
            user_rows, counted = self._counted(reads, user_id, terms, _TURNS)
            if not counted:
                return 0, []
            matched, lengths = self._candidates(reads, owner, user_id, counted, user_rows, None)
            if conversation_id is not None:
                inside = {int(r[0]) for r in reads.rows(
                    "SELECT id FROM memories WHERE id = ANY(%s) AND conversation_id = %s",
                    (list(matched), conversation_id))}
                matched = {row_id: s for row_id, s in matched.items() if row_id in inside}
            ordered = bm25_order(matched, lengths)
            page = [row_id for row_id, _ in ordered[offset:offset + limit]]
            found = {int(r[0]): r for r in reads.rows(f"SELECT {_COLUMNS} FROM memories WHERE id = ANY(%s)", (page,))}
        return len(ordered), [row_to_memory(found[row_id]) for row_id in page if row_id in found]

    def get(self, memory_id: int) -> Memory | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM memories WHERE id = %s", (memory_id,))
        return row_to_memory(rows[0]) if rows else None

    def export_jsonl(self, user_id: str | None = None) -> Iterator[str]:
        """One JSON line (no newline) per memory, oldest first; read page by page, never all at once."""

        def page_after(last_id: int) -> builtins.list[Any]:
            if user_id is None:
                return self._read(f"SELECT {_COLUMNS} FROM memories WHERE id > %s ORDER BY id LIMIT %s",
                                  (last_id, EXPORT_PAGE))
            return self._read(f"SELECT {_COLUMNS} FROM memories WHERE user_id = %s AND id > %s"
                              " ORDER BY id LIMIT %s", (user_id, last_id, EXPORT_PAGE))

        return exported_lines(page_after)

    def recall_blocks(self, user_id: str, turn_keys: Sequence[bytes], *,
                      deadline: float | None = None) -> dict[bytes, tuple[BlockLine, ...]]:
        """The kept blocks of these turns of `user_id`, as lines in order; a turn with no kept block
        is absent, one whose memories were all deleted maps to ()."""
        keys = list(dict.fromkeys(turn_keys))
        if not keys:
            return {}
        rows = self._read(
            "SELECT b.turn_key, l.memory_id, l.run, l.date, l.body FROM recall_blocks AS b"
            " LEFT JOIN recall_block_lines AS l ON l.block_id = b.id"
            " WHERE b.user_id = %s AND b.turn_key = ANY(%s) ORDER BY b.id, l.position", (user_id, keys), deadline)
        found: dict[bytes, list[BlockLine]] = {}
        for key, memory_id, run, date, body in rows:
            lines = found.setdefault(bytes(key), [])
            if memory_id is not None:
                lines.append(BlockLine(int(memory_id), int(run), date, body))
        return {key: tuple(lines) for key, lines in found.items()}

    def counts(self) -> dict[str, int]:
        """Memories and users (bounded: /memory-routing/info asks)."""
        row = self._read("SELECT coalesce(sum(rows), 0), count(*) FROM memory_user_rows", (),
                         time.monotonic() + INFO_DEADLINE_S)[0]
        return {"memories": int(row[0]), "users": int(row[1])}

    def users(self) -> builtins.list[tuple[str, int]]:
        rows = self._read("SELECT user_id, rows FROM memory_user_rows ORDER BY user_id")
        return [(r[0], int(r[1])) for r in rows]

    def close(self) -> None:
        """Stops the presence thread; the pool is the FleetDatabase's (SharedServers closes it)."""
        self._closed.set()
        self._presence.join(1.0)  # a daemon thread: one stuck on a connection attempt is left behind


def _best_sql(index: _Index, narrowed: str, user_id: str, selected: Sequence[tuple[str, int, str]], user_rows: int,
              exclude_conversation_id: str | None, limit: int) -> tuple[str, dict[str, Any]]:
    """The CTEs `matched, scored, best` (best: id, score, n = rank from 1) for the user's rows of
    `index` holding the selected words (`narrowed`: the owner's tsquery, and a period's), scored by
    BM25 (the formula of bm25_order) in the database; _MAX_CANDIDATES rows at most are scored."""
    args: dict[str, Any] = {"user": user_id, "most": _MAX_CANDIDATES, "limit": limit, "k1": _BM25_K1, "b": _BM25_B}
    weights = []
    for n, (_, count, tsquery) in enumerate(selected):
        args[f"q{n}"], args[f"w{n}"] = tsquery, _idf(user_rows, count)
        weights.append(f"(m.tsv @@ %(q{n})s::tsquery)::int * %(w{n})s::float8")
    args["query"] = f"{narrowed} & (" + " | ".join(f"({tsquery})" for _, _, tsquery in selected) + ")"
    where = "m.tsv @@ %(query)s::tsquery AND m.user_id = %(user)s"
    if exclude_conversation_id is not None:
        where += " AND m.conversation_id <> %(conversation)s"
        args["conversation"] = exclude_conversation_id
    sql = (f"matched AS (SELECT m.id, m.words::float8 AS words, {' + '.join(weights)} AS weight"
           f"  FROM {index.table} AS m WHERE {where} LIMIT %(most)s),"
           " scored AS (SELECT id, weight * (%(k1)s + 1) / (1 + %(k1)s * (1 - %(b)s + %(b)s * words"
           "  / greatest(1.0, avg(words) OVER ()))) AS score FROM matched),"
           " best AS (SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS n FROM scored"
           "  ORDER BY score DESC, id LIMIT %(limit)s)")
    return sql, args


def _rarest(counted: Sequence[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The words, rarest first, while their rows add up to MAX_RANKED (the rarest always)."""
    kept: list[tuple[str, int, str]] = []
    total = 0
    for item in sorted(counted, key=lambda c: c[1]):
        if kept and total + item[1] > MAX_RANKED:
            break
        kept.append(item)
        total += item[1]
    return kept


__all__ = ["PostgresMemoryStore", "bm25_order", "owner_lexeme"]
