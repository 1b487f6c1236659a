"""Pure handlers of the dashboard and its management API under /memory-routing/.

``handle()`` maps one request to a ``LocalAnswer``; the addon turns that into a response.
No mitmproxy here: the same function serves the gateway, the reserved host and the tests.

Routes, the table ``_route_table()`` holds (every answer is JSON unless noted; errors are
``{"error": {"message", "type"}}``):

  GET    /memory-routing/                      the page (text/html)
  GET    /memory-routing/static/<file>         the page's script and style sheet
  GET    /memory-routing/usage                 totals: ?group_by=user|model|client|proxy|day&since=&until=
  GET    /memory-routing/usage/series          tokens and cost per user: ?bucket=hour|day&since=&until=
  GET    /memory-routing/usage/recent          the last calls: ?limit=N
  (each usage route also takes ?proxy=NAME: only the calls that proxy of the fleet served)
  GET    /memory-routing/memories              ?user_id=U[&q=][&conversation_id=][&limit=N][&offset=N]
  GET    /memory-routing/memories/users        memory users with their counts
  GET    /memory-routing/memories/export       JSON Lines (application/x-ndjson) [?user_id=U]
  POST   /memory-routing/memories/import       JSON Lines body
  DELETE /memory-routing/memories/{id}         one memory [?user_id=U: only if it is U's]
  DELETE /memory-routing/memories?user_id=U    forget the user
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, UTC
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..memory.records import Memory, MemoryRecordError, MemoryStoreError
from ..memory.store import MemoryStore
from . import page
from memory_routing.errors import DashboardRequestError as DashboardRequestError  # re-exported
from memory_routing.errors import SharedServerUnavailable
from .usage_rows import GROUP_BY, UsageQueryError, UsageRow

PREFIX = "/memory-routing"
DEFAULT_RANGE_SECONDS = 7 * 86400
MAX_LIST_LIMIT = 500
MAX_RECENT_LIMIT = 1000
JSONL = "application/x-ndjson"
# A cross-site form can send only these without a CORS preflight, so an import must not accept them.
_SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_STATIC_NAME = re.compile(r"[a-z][a-z0-9_-]*\.(js|css)")
# When the fleet's database is down: how soon to ask again (the proxy retries it meanwhile).
UNAVAILABLE_RETRY_AFTER_S = 10
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "memory-routing.localhost"})
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class UsageStore(Protocol):
    """What dashboard.usage_rows.SQLiteUsageStore and usage_rows_pg.PostgresUsageStore offer."""

    def totals(self, group_by: str, since: float | None = None, until: float | None = None,
               proxy: str | None = None) -> list[dict[str, Any]]: ...

    def series(self, since: float | None = None, until: float | None = None, bucket: str = "day",
               proxy: str | None = None) -> list[dict[str, Any]]: ...

    def recent(self, limit: int = 50, proxy: str | None = None) -> list[UsageRow]: ...


@dataclass(frozen=True)
class DashboardSources:
    """What the handlers read. ``None`` stores: that part is off (shown as such, 404 in the API).

    ``config_summary`` and ``health`` return JSON-able dicts without secret values (the page
    redacts credential-looking fields again anyway).
    """

    usage: UsageStore | None
    memory: MemoryStore | None
    config_summary: Callable[[], Mapping[str, Any]] = dict
    health: Callable[[], Mapping[str, Any]] = dict
    clock: Callable[[], float] = time.time
    # Host names the dashboard answers to; a page of another site whose name was re-pointed at
    # 127.0.0.1 (DNS rebinding) sends its own name and is refused. None: any host.
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS


@dataclass(frozen=True)
class LocalAnswer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())




def handle(
    method: str,
    path: str,
    query: Mapping[str, str],
    body: bytes,
    sources: DashboardSources,
    headers: Mapping[str, str] | None = None,
) -> LocalAnswer | None:
    """Answers a request under /memory-routing/; None when the path is not the dashboard's.

    It answers every path under the prefix (404 for unknown ones), so the addon dispatches its
    own endpoints there (/memory-routing/info) before calling it.

    ``path`` without the query string; ``headers`` with lower-case names (Host, Origin and
    Content-Type are read to refuse cross-site writes).
    """
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return None
    method = method.upper()
    try:
        _check_host(headers or {}, sources.allowed_hosts)
        answer = _route(method if method != "HEAD" else "GET", path, query, body, sources, headers or {})
    except DashboardRequestError as e:
        answer = error_answer(e.status, e.message, e.error_type, e.headers)
    except MemoryRecordError as e:
        answer = error_answer(400, str(e))
    except SharedServerUnavailable as e:
        # The fleet's database is down or slow: said in the dashboard's own shape, never a traceback.
        answer = error_answer(503, f"the fleet's database is unavailable, try again shortly ({e}); calls are"
                              " still answered and their usage rows wait in the proxy until it is back",
                              "service_unavailable", (("retry-after", str(UNAVAILABLE_RETRY_AFTER_S)),))
    except (UsageQueryError, MemoryStoreError) as e:
        answer = error_answer(400 if isinstance(e, UsageQueryError) else 503, str(e),
                              "invalid_request_error" if isinstance(e, UsageQueryError) else "store_error")
    if answer is not None and method == "HEAD":
        return LocalAnswer(answer.status, answer.content_type, b"", answer.headers)
    return answer


def error_answer(status: int, message: str, error_type: str = "invalid_request_error",
                 headers: tuple[tuple[str, str], ...] = ()) -> LocalAnswer:
    return _json(status, {"error": {"message": message, "type": error_type}}, headers)


# --- routing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardRequest:
    """One request under the prefix, as a handler sees it. ``rest``: the path after the route's
    own (a memory id), for routes that take one."""

    method: str
    query: Mapping[str, str]
    body: bytes
    sources: DashboardSources
    headers: Mapping[str, str]
    rest: str = ""


Handler = Callable[[DashboardRequest], LocalAnswer]


@dataclass(frozen=True)
class Route:
    """The handler per method of one path under the prefix. ``takes_rest``: the path is a prefix
    and the remainder goes to the handler. ``writes``: its non-GET methods refuse cross-site
    requests (a page of another site must not delete or import memories through the browser)."""

    path: str
    methods: Mapping[str, Handler]
    takes_rest: bool = False
    writes: bool = False


def _route_table() -> tuple[Route, ...]:
    return (
        Route("", {"GET": _page}),
        Route("/static/", {"GET": _static}, takes_rest=True),
        Route("/usage", {"GET": _usage_totals}),
        Route("/usage/series", {"GET": _usage_series}),
        Route("/usage/recent", {"GET": _usage_recent}),
        Route("/memories", {"GET": _memories_list, "DELETE": _forget_user}, writes=True),
        Route("/memories/users", {"GET": _memory_users}),
        Route("/memories/export", {"GET": _export}),
        Route("/memories/import", {"POST": _import}, writes=True),
        Route("/memories/", {"GET": _memory_get, "DELETE": _memory_delete}, takes_rest=True, writes=True),
    )


def _route(method: str, path: str, query: Mapping[str, str], body: bytes,
           sources: DashboardSources, headers: Mapping[str, str]) -> LocalAnswer:
    if path == PREFIX:
        # Relative links on the page need the trailing slash.
        return LocalAnswer(308, "text/plain; charset=utf-8", b"", (("location", PREFIX + "/"),))
    rest = path[len(PREFIX):].rstrip("/")
    route = _EXACT.get(rest)
    remainder = ""
    if route is None:
        route = next((r for r in _BY_PREFIX if rest.startswith(r.path) and len(rest) > len(r.path)), None)
        if route is None:
            raise DashboardRequestError(404, f"no dashboard endpoint {path}; try {PREFIX}/, {PREFIX}/usage, "
                                        f"{PREFIX}/memories/users", "not_found_error")
        remainder = rest[len(route.path):]
    handler = route.methods.get(method)
    if handler is None:
        allowed = ", ".join(route.methods)
        raise DashboardRequestError(405, f"this endpoint answers {allowed}, not {method}",
                                    headers=(("allow", allowed),))
    if route.writes:
        _refuse_cross_site(method, headers)
    return handler(DashboardRequest(method, query, body, sources, headers, remainder))


def _check_host(headers: Mapping[str, str], allowed: frozenset[str] | None) -> None:
    host = headers.get("host")
    if allowed is None or host is None:
        return
    name = urlsplit("//" + host).hostname or ""
    if name not in allowed and not name.endswith(".localhost"):
        raise DashboardRequestError(403, f"the dashboard answers only to {', '.join(sorted(allowed))}, "
                                    f"not Host {host!r}", "permission_error")


def _refuse_cross_site(method: str, headers: Mapping[str, str]) -> None:
    """A page of another site must not delete or import memories through the user's browser."""
    if method == "GET":
        return
    origin = headers.get("origin")
    if origin is None:
        return  # not a browser's cross-site request (browsers send Origin on DELETE and POST)
    host = headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise DashboardRequestError(403, f"cross-site {method} refused: Origin {origin} is not this host",
                                    "permission_error")


# --- page and assets -------------------------------------------------------------------------


def _page(request: DashboardRequest) -> LocalAnswer:
    query, sources = request.query, request.sources
    now = sources.clock()
    range_name = query.get("range", page.DEFAULT_RANGE)
    if range_name not in page.RANGES:
        raise DashboardRequestError(400, f"range must be one of {', '.join(page.RANGES)}, not {range_name!r}")
    html = page.render_page(
        page.PageInput(
            now=now,
            range_name=range_name,
            usage=sources.usage,
            memory=sources.memory,
            memory_user=query.get("user") or None,
            memory_query=query.get("q") or None,
            config_summary=sources.config_summary(),
            health=sources.health(),
        )
    )
    return LocalAnswer(200, "text/html; charset=utf-8", html.encode(),
                       (("content-security-policy", PAGE_POLICY), ("cache-control", "no-store"),
                        ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")))


def _static(request: DashboardRequest) -> LocalAnswer:
    name = request.rest
    if not _STATIC_NAME.fullmatch(name):
        raise DashboardRequestError(404, f"no dashboard asset {name!r}", "not_found_error")
    asset = resources.files(__package__).joinpath("static", name)
    if not asset.is_file():
        raise DashboardRequestError(404, f"no dashboard asset {name!r}", "not_found_error")
    return LocalAnswer(200, _STATIC_TYPES["." + name.rsplit(".", 1)[1]], asset.read_bytes(),
                       (("cache-control", "no-cache"), ("x-content-type-options", "nosniff")))


# --- usage -----------------------------------------------------------------------------------


def _usage_store(sources: DashboardSources) -> UsageStore:
    if sources.usage is None:
        raise DashboardRequestError(404, "usage recording is off: no usage store", "not_found_error")
    return sources.usage


def _usage_totals(request: DashboardRequest) -> LocalAnswer:
    query, sources = request.query, request.sources
    group_by = query.get("group_by", "user")
    if group_by not in GROUP_BY:
        raise DashboardRequestError(400, f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")
    since, until = time_range(query, sources.clock())
    proxy = query.get("proxy") or None
    data = _usage_store(sources).totals(group_by, since, until, proxy)
    return _json(200, {"group_by": group_by, "since": iso_time(since), "until": _iso_or_none(until),
                       "proxy": proxy, "data": data})


def _usage_series(request: DashboardRequest) -> LocalAnswer:
    query, sources = request.query, request.sources
    bucket = query.get("bucket", "day")
    since, until = time_range(query, sources.clock())
    proxy = query.get("proxy") or None
    data = _usage_store(sources).series(since, until, bucket, proxy)
    return _json(200, {"bucket": bucket, "since": iso_time(since), "until": _iso_or_none(until),
                       "proxy": proxy, "data": data})


def _usage_recent(request: DashboardRequest) -> LocalAnswer:
    limit = _int_param(request.query, "limit", 50, 0, MAX_RECENT_LIMIT)
    rows = _usage_store(request.sources).recent(limit, request.query.get("proxy") or None)
    return _json(200, {"data": [usage_row_json(row) for row in rows]})


def usage_row_json(row: UsageRow) -> dict[str, Any]:
    record = dict(row.__dict__)
    record["at"] = iso_time(row.at)
    record["cache_read_tokens"] = row.cached_tokens  # the name beside cache_write_tokens; cached_tokens stays
    return record


def time_range(query: Mapping[str, str], now: float) -> tuple[float, float | None]:
    """``since`` (default: seven days ago) and ``until`` (default: open) as epoch seconds."""
    since = parse_time(query["since"], "since", end_of_day=False) if query.get("since") else now - DEFAULT_RANGE_SECONDS
    until = parse_time(query["until"], "until", end_of_day=True) if query.get("until") else None
    if until is not None and since > until:
        raise DashboardRequestError(400, "since must not be after until")
    return since, until


def parse_time(value: str, name: str, *, end_of_day: bool) -> float:
    """Epoch seconds, an ISO date (``until``: the end of that day) or an ISO date-time (UTC unless it says)."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise DashboardRequestError(400, f"{name} must be a finite number of seconds, not {value!r}")
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
            return start + 86400 if end_of_day else start
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DashboardRequestError(
            400, f"{name} must be epoch seconds or an ISO 8601 date or date-time, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- memories --------------------------------------------------------------------------------


def _memory_store(sources: DashboardSources) -> MemoryStore:
    if sources.memory is None:
        raise DashboardRequestError(404, "the embedded memory is off (memory.backend is not local)",
                                    "not_found_error")
    return sources.memory


def _required_user(query: Mapping[str, str], what: str) -> str:
    user_id = query.get("user_id", "")
    if not user_id:
        raise DashboardRequestError(400, f"{what} needs ?user_id=U (see /memory-routing/memories/users)")
    return user_id


def memory_json(memory: Memory) -> dict[str, Any]:
    return {
        "id": memory.id,
        "conversation_id": memory.conversation_id,
        "created_at": iso_time(memory.created_at),
        "role": memory.role,
        "text": memory.text,
        "client": memory.client,
        "model": memory.model,
    }


def _memories_list(request: DashboardRequest) -> LocalAnswer:
    query, sources = request.query, request.sources
    user_id = _required_user(query, "GET /memory-routing/memories")
    limit = _int_param(query, "limit", 50, 0, MAX_LIST_LIMIT)
    offset = _int_param(query, "offset", 0, 0, None)
    total, memories = _memory_store(sources).list(
        user_id, q=query.get("q") or None, conversation_id=query.get("conversation_id") or None,
        limit=limit, offset=offset)
    return _json(200, {"user_id": user_id, "total": total, "data": [memory_json(m) for m in memories]})


def _memory_get(request: DashboardRequest) -> LocalAnswer:
    memory_id = _memory_id(request.rest)
    memory = _memory_store(request.sources).get(memory_id)
    if memory is None:
        raise DashboardRequestError(404, f"no memory {memory_id}", "not_found_error")
    return _json(200, {"user_id": memory.user_id, **memory_json(memory)})


def _memory_delete(request: DashboardRequest) -> LocalAnswer:
    memory_id = _memory_id(request.rest)
    user_id = request.query.get("user_id") or None
    if not _memory_store(request.sources).delete(memory_id, user_id=user_id):
        owner = f" of user {user_id!r}" if user_id else ""
        raise DashboardRequestError(404, f"no memory {memory_id}{owner}", "not_found_error")
    return _json(200, {"id": memory_id, "deleted": True})


def _forget_user(request: DashboardRequest) -> LocalAnswer:
    query, sources = request.query, request.sources
    user_id = _required_user(query, "DELETE /memory-routing/memories (forget a user)")
    deleted = _memory_store(sources).forget_user(user_id)
    return _json(200, {"user_id": user_id, "deleted": deleted})


def _memory_users(request: DashboardRequest) -> LocalAnswer:
    store = _memory_store(request.sources)
    users = store.users()
    return _json(200, {
        "total_users": len(users),
        "total_memories": sum(count for _, count in users),
        "data": [{"user_id": user_id, "memories": count} for user_id, count in users],
    })


def _export(request: DashboardRequest) -> LocalAnswer:
    query, sources = request.query, request.sources
    user_id = query.get("user_id") or None
    lines = list(_memory_store(sources).export_jsonl(user_id))
    body = "".join(line + "\n" for line in lines).encode()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", user_id)[:64] if user_id else "all"
    return LocalAnswer(200, JSONL, body, (
        ("content-disposition", f'attachment; filename="memories-{name}.jsonl"'), ("cache-control", "no-store")))


def _import(request: DashboardRequest) -> LocalAnswer:
    body, sources, headers = request.body, request.sources, request.headers
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type in _SIMPLE_CONTENT_TYPES:
        raise DashboardRequestError(
            400, f"import needs Content-Type: {JSONL} (JSON Lines as exported), not {content_type}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DashboardRequestError(400, f"import body is not UTF-8 (byte {e.start})") from None
    imported = _memory_store(sources).import_jsonl(text.splitlines())
    return _json(200, {"imported": imported})


# --- helpers ---------------------------------------------------------------------------------


def _memory_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise DashboardRequestError(404, f"no memory {text!r}: a memory id is a number", "not_found_error")
    return int(text)


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DashboardRequestError(400, f"{name} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DashboardRequestError(400, f"{name} must be {bound}, not {value}")
    return value


def iso_time(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat().replace("+00:00", "Z")


def _iso_or_none(epoch_seconds: float | None) -> str | None:
    return iso_time(epoch_seconds) if epoch_seconds is not None else None


def _json(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> LocalAnswer:
    return LocalAnswer(status, "application/json", json.dumps(payload, indent=2, ensure_ascii=False).encode(),
                       (("cache-control", "no-store"), *headers))


_ROUTES = _route_table()
_EXACT = {route.path: route for route in _ROUTES if not route.takes_rest}
_BY_PREFIX = tuple(route for route in _ROUTES if route.takes_rest)
