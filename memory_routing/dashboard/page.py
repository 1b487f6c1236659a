"""The dashboard page: one HTML document with server-side SVG charts.

Every string that comes from data (user ids, model names, memory text, config values) goes
through ``html.escape``; the page loads only /memory-routing/static/* and calls only
/memory-routing/* (its Content-Security-Policy says so too). Secrets never reach it: the
config summary shows where a credential comes from, and credential-looking fields are
redacted again here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import urlencode

RANGES = {"24h": (86400, "hour"), "7d": (7 * 86400, "day"), "30d": (30 * 86400, "day")}
RANGE_LABELS = {"24h": "24 hours", "7d": "7 days", "30d": "30 days"}
DEFAULT_RANGE = "7d"
RECENT_CALLS = 20
MEMORY_PAGE = 100
# Colour-blind-safe palette (Okabe-Ito) for up to eight users; the rest share grey.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER_COLOUR = "#999999"
MAX_SERIES = len(PALETTE)

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


def render_page(data: PageInput) -> str:
    seconds, bucket = RANGES[data.range_name]
    since = data.now - seconds
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        "<title>Memory routing · dashboard</title><link rel=icon href='data:,'>",
        "<link rel=stylesheet href='/memory-routing/static/dashboard.css'>",
        "<script src='/memory-routing/static/dashboard.js' defer></script></head><body>",
        _header(data),
        "<main>",
        _usage_section(data, since, bucket),
        _memory_section(data),
        _config_section(data),
        "</main></body></html>",
    ]
    return "".join(parts)


# --- header ----------------------------------------------------------------------------------


def _header(data: PageInput) -> str:
    status = str(data.health.get("status", "unknown"))
    links = []
    for name, label in RANGE_LABELS.items():
        query = _query(range=name, user=data.memory_user, q=data.memory_query)
        current = " aria-current=page" if name == data.range_name else ""
        links.append(f"<a href='/memory-routing/?{escape(query)}'{current}>{label}</a>")
    return (
        "<header><h1>Memory routing</h1>"
        f"<span class='pill {'ok' if status == 'healthy' else 'bad'}' id=health-status>{escape(status)}</span>"
        f"<nav aria-label='time range'>{' '.join(links)}</nav>"
        f"<span class=muted id=updated data-refresh-seconds=30>updated {escape(_clock(data.now))} UTC</span>"
        "</header>"
    )


# --- usage -----------------------------------------------------------------------------------


def _usage_section(data: PageInput, since: float, bucket: str) -> str:
    if data.usage is None:
        return "<section id=usage><h2>Usage</h2><p class=muted>Usage recording is off.</p></section>"
    by_user = data.usage.totals("user", since, None)
    by_model = data.usage.totals("model", since, None)
    by_client = data.usage.totals("client", since, None)
    overall = data.usage.totals("all", since, None)
    series = data.usage.series(since, None, bucket)
    recent = data.usage.recent(RECENT_CALLS)
    users = [row["key"] for row in by_user]
    colours = {user: PALETTE[i] if i < MAX_SERIES else OTHER_COLOUR for i, user in enumerate(users)}
    starts = _bucket_starts(since, data.now, bucket)
    tokens = _stack(series, lambda row: row["input_tokens"] + row["output_tokens"])
    cost = _stack(series, lambda row: row["cost_usd"] or 0.0)
    label = RANGE_LABELS[data.range_name]
    return (
        "<section id=usage>"
        f"<h2>Usage <span class=muted>last {label}</span></h2>"
        + _tiles(by_user, overall[0] if overall else None)
        + "<div class=grid2>"
        + _figure(f"Tokens per memory user (in + out, per {bucket})",
                  stacked_bars_svg(starts, bucket, tokens, colours, _tokens, "tokens-chart"), users, colours)
        + _figure(f"Cost per memory user (USD, per {bucket})",
                  stacked_bars_svg(starts, bucket, cost, colours, _usd_axis, "cost-chart"), users, colours)
        + "</div><div class=grid2>"
        + "<div><figure><figcaption>Calls and errors per model</figcaption>"
        + model_bars_svg(by_model) + "</figure>"
        + "<figure><figcaption>Latency per model (ms, p50 solid, p95 light)</figcaption>"
        + latency_bars_svg(by_model) + "</figure></div>"
        + "<div><h3>Per model</h3>" + _totals_table(by_model, "Model", "per-model") + "</div>"
        + "</div><div class=grid2>"
        + "<div><h3>Per memory user</h3>" + _totals_table(by_user, "User", "per-user") + "</div>"
        + "<div><h3>Per client</h3>" + _totals_table(by_client, "Client", "per-client") + "</div>"
        + "</div>"
        + "<h3>Last calls</h3>" + _recent_table(recent)
        + "</section>"
    )


def _tiles(by_user: Sequence[Mapping[str, Any]], overall: Mapping[str, Any] | None) -> str:
    calls = sum(row["calls"] for row in by_user)
    errors = sum(row["errors"] for row in by_user)
    tokens_in = sum(row["input_tokens"] for row in by_user)
    tokens_out = sum(row["output_tokens"] for row in by_user)
    cached = sum(row["cached_tokens"] for row in by_user)
    priced = [row["cost_usd"] for row in by_user if row["cost_usd"] is not None]
    unpriced = sum(row["unpriced_calls"] for row in by_user)
    tiles = [
        ("Calls", f"{calls:,}", f"{len(by_user)} memory user{'s' if len(by_user) != 1 else ''}"),
        ("Errors", f"{errors:,}", f"{errors / calls:.1%} of calls" if calls else "–"),
        ("Tokens in", _tokens(tokens_in), f"{_tokens(cached)} cached"),
        ("Tokens out", _tokens(tokens_out), ""),
        ("Cost", _usd(sum(priced)) if priced else "–", f"{unpriced} call{'s' if unpriced != 1 else ''} unpriced"
         if unpriced else "LiteLLM price table"),
        ("Latency p50 / p95", f"{_ms(overall['latency_ms_p50'])} / {_ms(overall['latency_ms_p95'])}"
         if overall else "–", "ms, request to last byte"),
    ]
    cells = "".join(
        f"<div class=tile><div class=label>{label}</div><div class=value>{escape(value)}</div>"
        f"<div class=muted>{escape(note)}</div></div>"
        for label, value, note in tiles
    )
    return f"<div class=tiles id=tiles>{cells}</div>"


def _figure(caption: str, svg: str, users: Sequence[str], colours: Mapping[str, str]) -> str:
    legend = "".join(
        f"<li><svg width=10 height=10 aria-hidden=true><rect width=10 height=10 fill='{colours[user]}'/></svg>"
        f"{escape(user)}</li>"
        for user in users[:MAX_SERIES]
    )
    if len(users) > MAX_SERIES:
        legend += f"<li class=muted>+{len(users) - MAX_SERIES} more (grey)</li>"
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}<ul class=legend>{legend}</ul></figure>"


def _stack(series: Sequence[Mapping[str, Any]], value) -> dict[int, list[tuple[str, float]]]:
    stacks: dict[int, list[tuple[str, float]]] = {}
    for row in series:
        stacks.setdefault(int(row["start"]), []).append((row["user_id"], float(value(row))))
    return stacks


def _bucket_starts(since: float, now: float, bucket: str) -> list[int]:
    width = RANGES["24h"][0] // 24 if bucket == "hour" else 86400
    first = int(since // width) * width
    return list(range(first, int(now // width) * width + 1, width))


def stacked_bars_svg(
    starts: Sequence[int],
    bucket: str,
    stacks: Mapping[int, Sequence[tuple[str, float]]],
    colours: Mapping[str, str],
    fmt,
    element_id: str,
) -> str:
    """One bar per bucket, stacked by user, with a labelled y axis and a tooltip per segment."""
    width, height, left, bottom, top = 640, 200, 56, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((sum(v for _, v in stacks.get(s, ())) for s in starts), default=0.0)
    scale_max = _nice_ceiling(peak)
    slot = plot_w / max(1, len(starts))
    bar_w = max(1.0, slot * 0.72)
    out = [f"<svg id={element_id} class=chart viewBox='0 0 {width} {height}' role=img "
           f"aria-label='{escape(element_id)}' preserveAspectRatio='none'>"]
    for i in range(5):
        value = scale_max * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f"<line x1={left} x2={width - 8} y1={y:.1f} y2={y:.1f} class=grid />"
                   f"<text x={left - 6} y={y + 4:.1f} class=axis text-anchor=end>{escape(fmt(value))}</text>")
    label_every = max(1, len(starts) // 8)
    for index, start in enumerate(starts):
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h
        segments = sorted(stacks.get(start, ()), key=lambda item: item[0])
        for user, value in segments:
            if value <= 0 or scale_max <= 0:
                continue
            h = plot_h * value / scale_max
            y -= h
            tip = f"{user} · {_bucket_label(start, bucket)}: {fmt(value)}"
            out.append(f"<rect class=bar x={x:.1f} y={y:.1f} width={bar_w:.1f} height={max(h, 0.5):.1f} "
                       f"fill='{colours.get(user, OTHER_COLOUR)}' data-user='{escape(user)}' "
                       f"data-value='{value:g}'><title>{escape(tip)}</title></rect>")
        if index % label_every == 0:
            out.append(f"<text x={x + bar_w / 2:.1f} y={height - 6} class=axis text-anchor=middle>"
                       f"{escape(_bucket_label(start, bucket))}</text>")
    if peak == 0:
        out.append(f"<text x={left + plot_w / 2:.0f} y={top + plot_h / 2:.0f} class=empty text-anchor=middle>"
                   "no calls in this range</text>")
    out.append("</svg>")
    return "".join(out)


def model_bars_svg(by_model: Sequence[Mapping[str, Any]]) -> str:
    """Horizontal bars: calls per model, the erroring part in red."""
    rows = list(by_model)[:12]
    row_h, left, width = 24, 200, 640
    height = max(1, len(rows)) * row_h + 8
    peak = max((row["calls"] for row in rows), default=0)
    out = [f"<svg id=model-chart class=chart viewBox='0 0 {width} {height}' role=img aria-label='calls per model'>"]
    if not rows:
        out.append(f"<text x={width / 2:.0f} y=20 class=empty text-anchor=middle>no calls in this range</text>")
    for i, row in enumerate(rows):
        y = 4 + i * row_h
        bar_space = width - left - 90
        ok_w = bar_space * (row["calls"] - row["errors"]) / peak if peak else 0
        err_w = bar_space * row["errors"] / peak if peak else 0
        name = str(row["key"])
        shown = name if len(name) <= 28 else name[:27] + "…"
        errors = f" ({row['errors']} err)" if row["errors"] else ""
        out.append(
            f"<text x={left - 8} y={y + 16} class=axis text-anchor=end><title>{escape(name)}</title>{escape(shown)}</text>"
            f"<rect class=bar x={left} y={y + 3} width={ok_w:.1f} height={row_h - 8} fill='{PALETTE[0]}' "
            f"data-model='{escape(name)}' data-calls='{row['calls']}'><title>{escape(name)}: {row['calls']} calls</title></rect>"
            f"<rect class=bar x={left + ok_w:.1f} y={y + 3} width={err_w:.1f} height={row_h - 8} fill='#C0392B' "
            f"data-errors='{row['errors']}'><title>{escape(name)}: {row['errors']} errors</title></rect>"
            f"<text x={left + ok_w + err_w + 6:.1f} y={y + 16} class=axis>{row['calls']}{errors}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def latency_bars_svg(by_model: Sequence[Mapping[str, Any]]) -> str:
    """Horizontal bars per model: p95 light, p50 solid over it."""
    rows = [row for row in by_model if row["latency_ms_p95"] is not None][:12]
    row_h, left, width = 24, 200, 640
    height = max(1, len(rows)) * row_h + 8
    peak = max((row["latency_ms_p95"] for row in rows), default=0.0)
    out = [f"<svg id=latency-chart class=chart viewBox='0 0 {width} {height}' role=img "
           "aria-label='latency per model'>"]
    if not rows:
        out.append(f"<text x={width / 2:.0f} y=20 class=empty text-anchor=middle>no latencies in this range</text>")
    bar_space = width - left - 110
    for i, row in enumerate(rows):
        y = 4 + i * row_h
        name = str(row["key"])
        shown = name if len(name) <= 28 else name[:27] + "…"
        p50, p95 = row["latency_ms_p50"], row["latency_ms_p95"]
        w50, w95 = (bar_space * p50 / peak, bar_space * p95 / peak) if peak else (0, 0)
        out.append(
            f"<text x={left - 8} y={y + 16} class=axis text-anchor=end><title>{escape(name)}</title>{escape(shown)}</text>"
            f"<rect x={left} y={y + 3} width={w95:.1f} height={row_h - 8} fill='{PALETTE[4]}' fill-opacity=0.45 "
            f"data-model='{escape(name)}' data-p95='{p95:g}'><title>{escape(name)}: p95 {_ms(p95)} ms</title></rect>"
            f"<rect x={left} y={y + 3} width={w50:.1f} height={row_h - 8} fill='{PALETTE[0]}' "
            f"data-p50='{p50:g}'><title>{escape(name)}: p50 {_ms(p50)} ms</title></rect>"
            f"<text x={left + w95 + 6:.1f} y={y + 16} class=axis>{_ms(p50)} / {_ms(p95)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _totals_table(rows: Sequence[Mapping[str, Any]], title: str, element_id: str) -> str:
    if not rows:
        return f"<p class=muted id={element_id}>No calls in this range.</p>"
    head = (f"<tr><th>{title}</th><th class=num>Calls</th><th class=num>Errors</th><th class=num>Tokens in</th>"
            "<th class=num>Tokens out</th><th class=num>Cost</th><th class=num>p50 ms</th><th class=num>p95 ms</th></tr>")
    body = "".join(
        f"<tr><td class=key>{escape(str(row['key']))}</td><td class=num>{row['calls']:,}</td>"
        f"<td class='num{' bad' if row['errors'] else ''}'>{row['errors']:,}</td>"
        f"<td class=num>{_tokens(row['input_tokens'])}</td><td class=num>{_tokens(row['output_tokens'])}</td>"
        f"<td class=num>{_usd(row['cost_usd']) if row['cost_usd'] is not None else '–'}</td>"
        f"<td class=num>{_ms(row['latency_ms_p50'])}</td><td class=num>{_ms(row['latency_ms_p95'])}</td></tr>"
        for row in rows
    )
    return f"<table id={element_id}><thead>{head}</thead><tbody>{body}</tbody></table>"


def _recent_table(rows: Sequence[Any]) -> str:
    if not rows:
        return "<p class=muted id=recent-calls>No calls yet.</p>"
    head = ("<tr><th>Time (UTC)</th><th>User</th><th>Client</th><th>Model asked → routed to</th><th>Route</th>"
            "<th class=num>Status</th><th class=num>In</th><th class=num>Out</th><th class=num>Cost</th>"
            "<th class=num>TTFB ms</th><th class=num>Total ms</th><th>Memory</th></tr>")
    body = []
    for row in rows:
        failed = row.error is not None or row.status is None or row.status >= 400
        route = row.route + (f" → {row.translated_to}" if row.translated_to else "")
        memory = " ".join(word for word, on in (("read", row.memory_injected), ("stored", row.memory_stored)) if on)
        status = str(row.status) if row.status is not None else "–"
        error = f"<div class='muted small'>{escape(row.error)}</div>" if row.error else ""
        body.append(
            f"<tr class='{'failed' if failed else ''}'><td class=time>{escape(_clock(row.at))}</td>"
            f"<td class=key>{escape(row.user_id)}</td><td>{escape(row.client)}</td>"
            f"<td>{escape(row.alias)} → {escape(row.provider)}/{escape(row.provider_model)}"
            f" <span class=muted>({escape(row.protocol)})</span></td>"
            f"<td>{escape(route)}{error}</td><td class='num{' bad' if failed else ''}'>{escape(status)}</td>"
            f"<td class=num>{_tokens(row.input_tokens)}</td><td class=num>{_tokens(row.output_tokens)}</td>"
            f"<td class=num>{_usd(row.cost_usd) if row.cost_usd is not None else '–'}</td>"
            f"<td class=num>{_ms(row.ttfb_ms)}</td><td class=num>{_ms(row.latency_ms)}</td>"
            f"<td class=nowrap>{escape(memory) or '–'}</td></tr>"
        )
    return f"<table id=recent-calls><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


# --- memory browser --------------------------------------------------------------------------


def _memory_section(data: PageInput) -> str:
    if data.memory is None:
        return ("<section id=memory><h2>Memory</h2><p class=muted>The embedded memory is off "
                "(memory.backend is not local).</p></section>")
    users = data.memory.users()
    selected = data.memory_user if data.memory_user else (users[0][0] if users else None)
    options = "".join(
        f"<option value='{escape(user)}'{' selected' if user == selected else ''}>{escape(user)} ({count:,})</option>"
        for user, count in users
    )
    if selected and selected not in {user for user, _ in users}:
        options += f"<option value='{escape(selected)}' selected>{escape(selected)} (0)</option>"
    total_memories = sum(count for _, count in users)
    form = (
        "<form id=memory-form method=get action='/memory-routing/'>"
        f"<input type=hidden name=range value='{escape(data.range_name)}'>"
        f"<label>User <select name=user id=memory-user>{options}</select></label> "
        f"<label>Search <input type=search name=q id=memory-q value='{escape(data.memory_query or '')}' "
        "placeholder='words in the memory'></label> <button type=submit>Show</button></form>"
    )
    if not selected:
        return (f"<section id=memory><h2>Memory</h2>{form}"
                "<p class=muted id=memory-empty>Nothing remembered yet.</p></section>")
    total, memories = data.memory.list(selected, q=data.memory_query, limit=MEMORY_PAGE)
    export = "/memory-routing/memories/export?" + urlencode({"user_id": selected})
    actions = (
        f"<div class=actions><span id=memory-total data-total='{total}'>{total:,} "
        f"memor{'y' if total == 1 else 'ies'}{' matching' if data.memory_query else ''}"
        f"{f', newest {len(memories)} shown' if total > len(memories) else ''}</span> "
        f"<a href='{escape(export)}' id=memory-export download>Export JSON Lines</a> "
        f"<button type=button id=forget-user class=danger data-user='{escape(selected)}'>"
        f"Forget {escape(selected)}</button></div>"
    )
    items = "".join(
        f"<li class=memory id=memory-{m.id} data-id='{m.id}'>"
        f"<div class=meta><span>{escape(_clock(m.created_at))}</span> <b>{escape(m.role)}</b> "
        f"<span class=muted>{escape(m.client)} · {escape(m.model)} · conversation {escape(m.conversation_id)}</span>"
        f"<button type=button class='delete danger' data-id='{m.id}' data-user='{escape(selected)}' "
        f"aria-label='Delete memory {m.id}'>Delete</button></div>"
        f"<div class=text>{escape(m.text)}</div></li>"
        for m in memories
    )
    listing = f"<ol id=memory-list>{items}</ol>" if items else "<p class=muted id=memory-empty>No memories match.</p>"
    return (f"<section id=memory><h2>Memory <span class=muted>{total_memories:,} in all, "
            f"{len(users)} user{'s' if len(users) != 1 else ''}</span></h2>{form}{actions}{listing}"
            "<p id=memory-message role=status class=muted></p></section>")


# --- configuration and health ----------------------------------------------------------------


def _config_section(data: PageInput) -> str:
    return ("<section id=config class=grid2><div><h2>Health</h2>" + _tree(redact(data.health), "health")
            + "</div><div><h2>Configuration</h2>" + _tree(redact(data.config_summary), "config-summary")
            + "</div></section>")


def redact(value: Any, key: str = "") -> Any:
    """Drops credential-looking values that are not a description of where the credential comes from."""
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item, key) for item in value]
    if _SECRET_KEY.search(key) and isinstance(value, str) and value and not _CREDENTIAL_SOURCE.fullmatch(value):
        return REDACTED
    return value


def _tree(value: Any, element_id: str | None = None) -> str:
    attribute = f" id={element_id}" if element_id else ""
    if isinstance(value, Mapping):
        if not value:
            return f"<span class=muted{attribute}>none</span>"
        rows = "".join(f"<dt>{escape(k)}</dt><dd>{_tree(v)}</dd>" for k, v in value.items())
        return f"<dl{attribute}>{rows}</dl>"
    if isinstance(value, list):
        if not value:
            return f"<span class=muted{attribute}>none</span>"
        return f"<ul class=plain{attribute}>" + "".join(f"<li>{_tree(item)}</li>" for item in value) + "</ul>"
    if value is None:
        return f"<span class=muted{attribute}>–</span>"
    return f"<span{attribute}>{escape(str(value))}</span>"


# --- formatting ------------------------------------------------------------------------------


def _query(**params: str | None) -> str:
    return urlencode({k: v for k, v in params.items() if v})


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _bucket_label(start: int, bucket: str) -> str:
    moment = datetime.fromtimestamp(start, timezone.utc)
    return moment.strftime("%H:00") if bucket == "hour" else moment.strftime("%b %d")


def _tokens(value: float | None) -> str:
    if value is None:
        return "–"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def _usd(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _usd_axis(value: float) -> str:
    return "$0" if value == 0 else f"${value:.4g}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (axes read easily)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power

