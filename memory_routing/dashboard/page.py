"""The dashboard page: one HTML document from a jinja2 template, with server-side SVG charts.

The template (templates/page.html) is rendered with autoescaping on: every string that comes
from data (user ids, model names, memory text, config values) is escaped by jinja2, never by
hand. The chart geometry is charts.py's. The page loads only /memory-routing/static/* and calls
only /memory-routing/* (its Content-Security-Policy says so too). Secrets never reach it: the
config summary shows where a credential comes from, and credential-looking fields are
redacted again here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, UTC
from functools import cache
from typing import Any
from urllib.parse import urlencode

import jinja2

from . import charts

RANGES = {"24h": (86400, "hour"), "7d": (7 * 86400, "day"), "30d": (30 * 86400, "day")}
RANGE_LABELS = {"24h": "24 hours", "7d": "7 days", "30d": "30 days"}
DEFAULT_RANGE = "7d"
RECENT_CALLS = 20
MEMORY_PAGE = 100
BUCKET_SECONDS = {"hour": 3600, "day": 86400}

_SECRET_KEY = re.compile(r"key|secret|token|password|cookie|authorization|credential", re.IGNORECASE)
# The config summary's own descriptions of where a credential comes from: safe to show.
_CREDENTIAL_SOURCE = re.compile(r"os\.environ/[A-Za-z_][A-Za-z0-9_]* \((set|unset)\)|set inline in the config")
REDACTED = "[redacted]"


@dataclass(frozen=True)
class PageInput:
    now: float
    range_name: str
    usage: Any  # api.UsageStore or None
    memory: Any  # memory.store.MemoryStore or None
    memory_user: str | None
    memory_query: str | None
    config_summary: Mapping[str, Any]
    health: Mapping[str, Any]


@dataclass(frozen=True)
class Tile:
    element_id: str
    label: str
    value: str
    note: str


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,  # every {{ }} is escaped, attributes included
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, not shows blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(tokens=tokens, usd=usd, ms=ms, clock=clock, percent=percent)
    return environment.get_template("page.html")


def render_page(data: PageInput) -> str:
    seconds, bucket = RANGES[data.range_name]
    since = data.now - seconds
    return _template().render(
        range_name=data.range_name,
        range_label=RANGE_LABELS[data.range_name],
        ranges=[(label, "?" + _query(range=name, user=data.memory_user, q=data.memory_query),
                 name == data.range_name) for name, label in RANGE_LABELS.items()],
        status=str(data.health.get("status", "unknown")),
        updated=clock(data.now),
        usage=_usage(data, since, bucket) if data.usage is not None else None,
        memory=_memory(data) if data.memory is not None else None,
        health=redact(data.health),
        config_summary=redact(data.config_summary),
    )


# --- usage -----------------------------------------------------------------------------------


def _usage(data: PageInput, since: float, bucket: str) -> dict[str, Any]:
    by_user = data.usage.totals("user", since, None)
    by_model = data.usage.totals("model", since, None)
    overall = data.usage.totals("all", since, None)
    series = data.usage.series(since, None, bucket)
    users = [row["key"] for row in by_user]
    colours = charts.series_colours(users)
    starts = _bucket_starts(since, data.now, bucket)
    legend = [(user, colours[user]) for user in users[:charts.MAX_SERIES]]
    return {
        "bucket": bucket,
        "tiles": tiles(overall[0] if overall else None, len(by_user)),
        "tokens_chart": charts.stacked_bars(
            "tokens-chart", _columns(starts, bucket, series, lambda row: row["input_tokens"] + row["output_tokens"]),
            colours, tokens),
        "cost_chart": charts.stacked_bars(
            "cost-chart", _columns(starts, bucket, series, lambda row: row["cost_usd"] or 0.0), colours, usd_axis),
        "legend": legend,
        "more_users": max(0, len(users) - charts.MAX_SERIES),
        "model_chart": charts.model_bars(by_model),
        "latency_chart": charts.latency_bars(by_model, ms),
        "by_model": by_model,
        "by_user": by_user,
        "by_client": data.usage.totals("client", since, None),
        "recent": [_recent(row) for row in data.usage.recent(RECENT_CALLS)],
    }


def tiles(overall: Mapping[str, Any] | None, users: int) -> list[Tile]:
    """The figures over every call of the range: the prompt cache and the memory's own cost
    stand beside the calls, tokens and cost they are part of."""
    if overall is None:
        overall = {"calls": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
                   "cache_write_tokens": 0, "reasoning_tokens": 0, "cache_hit_ratio": 0.0, "cache_saved_usd": None,
                   "memory_calls": 0, "memory_tokens": 0, "memory_cost_usd": None, "cost_usd": None,
                   "unpriced_calls": 0, "latency_ms_p50": None, "latency_ms_p95": None}
    calls, errors, unpriced = overall["calls"], overall["errors"], overall["unpriced_calls"]
    memory_calls = overall["memory_calls"]
    return [
        Tile("tile-calls", "Calls", f"{calls:,}", f"{users} memory user{'s' if users != 1 else ''}"),
        Tile("tile-errors", "Errors", f"{errors:,}", f"{errors / calls:.1%} of calls" if calls else "–"),
        Tile("tile-tokens-in", "Tokens in", tokens(overall["input_tokens"]),
             f"{tokens(overall['cache_read_tokens'])} cached"),
        Tile("tile-tokens-out", "Tokens out", tokens(overall["output_tokens"]),
             f"{tokens(overall['reasoning_tokens'])} reasoning" if overall["reasoning_tokens"] else ""),
        Tile("tile-cost", "Cost", usd(overall["cost_usd"]),
             f"{unpriced} call{'s' if unpriced != 1 else ''} unpriced" if unpriced else "LiteLLM price table"),
        Tile("tile-cache", "Prompt cache hits", percent(overall["cache_hit_ratio"]),
             f"{tokens(overall['cache_read_tokens'])} read, {tokens(overall['cache_write_tokens'])} written"),
        Tile("tile-cache-saved", "Cache saved", usd(overall["cache_saved_usd"]),
             "against the same calls with no prompt cache"),
        Tile("tile-memory", "Memory cost", usd(overall["memory_cost_usd"]),
             f"{tokens(overall['memory_tokens'])} tokens in {memory_calls:,} recall block"
             f"{'s' if memory_calls != 1 else ''}"),
        Tile("tile-latency", "Latency p50 / p95", f"{ms(overall['latency_ms_p50'])} / {ms(overall['latency_ms_p95'])}",
             "ms, request to last byte"),
    ]


def _columns(starts: Sequence[int], bucket: str, series: Sequence[Mapping[str, Any]], value) -> list[
        tuple[str, dict[str, float]]]:
    columns: dict[int, dict[str, float]] = {start: {} for start in starts}
    for row in series:
        column = columns.setdefault(int(row["start"]), {})
        column[row["user_id"]] = column.get(row["user_id"], 0.0) + float(value(row))
    return [(_bucket_label(start, bucket), columns[start]) for start in sorted(columns)]


def _bucket_starts(since: float, now: float, bucket: str) -> list[int]:
    width = BUCKET_SECONDS[bucket]
    first = int(since // width) * width
    return list(range(first, int(now // width) * width + 1, width))


def _recent(row: Any) -> dict[str, Any]:
    return {
        "row": row,
        "failed": row.error is not None or row.status is None or row.status >= 400,
        "route": row.route + (f" → {row.translated_to}" if row.translated_to else ""),
        "memory": " ".join(word for word, on in (("read", row.memory_injected), ("stored", row.memory_stored)) if on),
    }


# --- memory browser --------------------------------------------------------------------------


def _memory(data: PageInput) -> dict[str, Any]:
    users = data.memory.users()
    selected = data.memory_user if data.memory_user else (users[0][0] if users else None)
    options = [(user, count, user == selected) for user, count in users]
    if selected and selected not in {user for user, _ in users}:
        options.append((selected, 0, True))
    view: dict[str, Any] = {
        "options": options, "selected": selected, "query": data.memory_query or "",
        "total_memories": sum(count for _, count in users), "users": len(users),
    }
    if selected:
        total, memories = data.memory.list(selected, q=data.memory_query, limit=MEMORY_PAGE)
        view.update(total=total, memories=memories,
                    export="/memory-routing/memories/export?" + urlencode({"user_id": selected}))
    return view


# --- configuration and health ----------------------------------------------------------------


def redact(value: Any, key: str = "") -> Any:
    """Drops credential-looking values that are not a description of where the credential comes from."""
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item, key) for item in value]
    if _SECRET_KEY.search(key) and isinstance(value, str) and value and not _CREDENTIAL_SOURCE.fullmatch(value):
        return REDACTED
    return value


# --- formatting (the template's filters) -----------------------------------------------------


def _query(**params: str | None) -> str:
    return urlencode({k: v for k, v in params.items() if v})


def clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _bucket_label(start: int, bucket: str) -> str:
    moment = datetime.fromtimestamp(start, UTC)
    return moment.strftime("%H:00") if bucket == "hour" else moment.strftime("%b %d")


def tokens(value: float | None) -> str:
    if value is None:
        return "–"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def usd(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "$0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}${value:,.2f}" if value >= 1 else f"{sign}${value:.4f}"


def usd_axis(value: float) -> str:
    """An axis tick in dollars with no more digits than the tick needs: $0.00015, $2.5, $1,200."""
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}".rstrip("0").rstrip(".")
    text = f"{value:.10f}".rstrip("0")
    return "$" + text


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"
