"""The dashboard page in headless Chromium, served by the pure handlers over real SQLite data.

A stdlib HTTP server on a loopback port routes every request to dashboard.api.handle(); the
memory is the real SQLite store, the usage rows sit in its file. The end-to-end version of
this test goes through a real mitmdump instead (same helpers from tests/browser.py).
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from browser import BrowserPage, chromium_page
from memory_routing.dashboard.api import DashboardSources, handle
from memory_routing.dashboard.usage_rows import SQLiteUsageStore, UsageRow
from memory_routing.memory.records import NewMemory
from memory_routing.memory.store import SQLiteMemoryStore

XSS_TEXT = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script> & done"
USERS = ("alice@laptop", "bob-jetbrains", "ci-pipeline", "claude-code:proj")
MODELS = (("openai", "gpt-4o-mini", "openai"), ("anthropic", "claude-sonnet-4-5", "anthropic"),
          ("openai", "gpt-4.1", "openai"), ("gemini", "gemini-2.5-flash", "gemini"))


class DashboardServer:
    """A loopback HTTP server answering with dashboard.api.handle()."""

    def __init__(self, sources: DashboardSources) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = handle(self.command, parts.path, dict(parse_qsl(parts.query)), body, outer.sources, headers)
                outer.paths.append(f"{self.command} {self.path}")
                if answer is None:
                    self.send_error(404)
                    return
                self.send_response(answer.status)
                self.send_header("content-type", answer.content_type)
                self.send_header("content-length", str(len(answer.body)))
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args) -> None:  # quiet test output
                pass

        self.sources = sources
        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> DashboardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@dataclass
class Data:
    memory: SQLiteMemoryStore
    usage: SQLiteUsageStore
    rows: list[UsageRow]
    memory_ids: dict[str, list[int]]


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Data]:
    now = time.time()
    memory = SQLiteMemoryStore(tmp_path / "memory-routing-memory.sqlite3")
    usage = SQLiteUsageStore(memory.open_connection())
    rng = random.Random(14)
    rows = []
    for _ in range(160):
        user = USERS[min(int(rng.expovariate(1.1)), len(USERS) - 1)]
        provider, model, protocol = MODELS[min(int(rng.expovariate(1.3)), len(MODELS) - 1)]
        failed = rng.random() < 0.08
        tokens_in, tokens_out = rng.randint(300, 9000), rng.randint(40, 1500)
        latency = rng.lognormvariate(6.6, 0.5)
        translated = protocol == "anthropic" and user == USERS[0]
        injected = rng.random() < 0.6
        block = rng.randint(40, 400) if injected and not failed else None
        rows.append(UsageRow(
            at=now - rng.uniform(0, 6.9 * 86400), user_id=user, client=user.split("@")[0].split(":")[0],
            alias="fast" if "mini" in model or "flash" in model else "smart", provider=provider,
            provider_model=model, protocol="openai" if translated else protocol,
            status=rng.choice((500, 502, 429)) if failed else 200,
            error="upstream answered 5xx" if failed else None,
            input_tokens=None if failed else tokens_in, output_tokens=None if failed else tokens_out,
            cached_tokens=None if failed else tokens_in // 3,
            cost_usd=None if failed or provider == "gemini" else round((tokens_in * 3 + tokens_out * 15) / 1e6, 6),
            latency_ms=round(latency, 1), ttfb_ms=round(latency * 0.3, 1),
            memory_injected=injected, memory_stored=not failed,
            route="translated" if translated else "routed", translated_to="anthropic" if translated else None,
            cache_write_tokens=None if failed or provider != "anthropic" else tokens_in // 10,
            memory_tokens=block, memory_cost_usd=None if block is None else round(block * 3 / 1e6, 9),
            cache_saved_usd=None if failed or provider == "gemini" else round(tokens_in // 3 * 2.7 / 1e6, 9),
        ))
    usage.insert(rows)
    texts = {
        USERS[0]: ["The staging database moved to db-2.internal last week.",
                   "Prefers pytest fixtures over setUp methods; wants type hints everywhere.",
                   "Release checklist: bump version, update CHANGELOG, tag, then `make lock`.",
                   XSS_TEXT],
        USERS[1]: ["Works on the JetBrains plugin; Kotlin 2.0 with Gradle.",
                   "Asked how to debounce file watcher events."],
        USERS[3]: ["Project uses mitmproxy addons; memory store lives in SQLite with FTS5."],
    }
    ids: dict[str, list[int]] = {}
    for user, lines in texts.items():
        ids[user] = memory.add_many([
            NewMemory(user, f"conv-{n // 2}", user.split("@")[0], "smart", "user" if n % 2 == 0 else "assistant",
                      text, now - 3600 * (len(lines) - n))
            for n, text in enumerate(lines)
        ])
    try:
        yield Data(memory, usage, rows, ids)
    finally:
        usage.conn.close()
        memory.close()


@pytest.fixture
def server(data: Data) -> Iterator[DashboardServer]:
    sources = DashboardSources(
        usage=data.usage,
        memory=data.memory,
        config_summary=lambda: {
            "path": "config.yaml",
            "models": [{"model_name": "smart", "model": "anthropic/claude-sonnet-4-5",
                        "api_key": "os.environ/ANTHROPIC_API_KEY (set)"},
                       {"model_name": "fast", "model": "openai/gpt-4o-mini", "api_key": "sk-should-never-show"}],
            "memory": {"backend": "local", "retention_days": 90},
        },
        health=lambda: {"status": "healthy", "version": "0.1.0", "memory": data.memory.counts()},
    )
    with DashboardServer(sources) as running:
        yield running


def _sum_by(page, selector: str, key: str, value: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for item in page.eval_on_selector_all(
            selector, f"els => els.map(e => [e.dataset.{key}, Number(e.dataset.{value})])"):
        totals[item[0]] += item[1]
    return dict(totals)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _open(browser: BrowserPage, url: str) -> None:
    response = browser.page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, url


def test_dashboard_in_chromium(tmp_path: Path, data: Data, server: DashboardServer) -> None:
    with chromium_page(tmp_path) as browser:
        page = browser.page
        _open(browser, server.origin + "/memory-routing/")

        # The charts show the inserted calls: tokens per user, calls and errors per model.
        tokens = _sum_by(page, "#tokens-chart rect.bar", "user", "value")
        expected_tokens: dict[str, float] = defaultdict(float)
        for row in data.rows:
            expected_tokens[row.user_id] += (row.input_tokens or 0) + (row.output_tokens or 0)
        assert tokens == pytest.approx(dict(expected_tokens))
        costs = _sum_by(page, "#cost-chart rect.bar", "user", "value")
        assert sum(costs.values()) == pytest.approx(sum(r.cost_usd or 0 for r in data.rows), rel=1e-4)
        calls = {m: c for m, c in page.eval_on_selector_all(
            "#model-chart rect[data-calls]", "els => els.map(e => [e.dataset.model, Number(e.dataset.calls)])")}
        assert calls == dict(Counter(row.provider_model for row in data.rows))
        errors = sum(page.eval_on_selector_all("#model-chart rect[data-errors]",
                                               "els => els.map(e => Number(e.dataset.errors))"))
        assert errors == sum(1 for row in data.rows if row.status != 200)
        p50 = {m: v for m, v in page.eval_on_selector_all(
            "#latency-chart rect[data-p95]", "els => els.map(e => [e.dataset.model, Number(e.nextElementSibling.dataset.p50)])")}
        by_model: dict[str, list[float]] = defaultdict(list)
        for row in data.rows:
            by_model[row.provider_model].append(row.latency_ms)
        assert p50 == pytest.approx({m: _median(v) for m, v in by_model.items()}, abs=0.001)
        assert page.locator("#recent-calls tbody tr").count() == 20
        assert page.locator("#recent-calls").get_by_text("translated → anthropic").count() > 0
        assert page.locator("#per-model tbody tr").count() == len(MODELS)
        assert "sk-should-never-show" not in page.content()
        assert page.locator("#config-summary").get_by_text("os.environ/ANTHROPIC_API_KEY (set)").count() == 1

        # The memory browser: the first user is shown; their text is text, not markup.
        alice = USERS[0]
        assert page.locator("#memory-list li").count() == 4
        assert page.locator("#memory-list").get_by_text(XSS_TEXT, exact=True).count() == 1
        assert page.evaluate("window.__xss") is None

        # Search, then delete one memory by clicking: it is gone from the store, the rest stay.
        page.fill("#memory-q", "pytest fixtures")
        with page.expect_navigation():
            page.click("#memory-form button[type=submit]")
        assert page.locator("#memory-list li").count() == 1
        target = data.memory_ids[alice][1]
        page.click(f"#memory-{target} button.delete")
        page.locator(f"#memory-{target}").wait_for(state="detached")
        assert page.locator("#memory-message").text_content() == f"Deleted memory {target}."
        assert data.memory.get(target) is None
        assert data.memory.list(alice)[0] == 3

        # Pick another user and forget them (the confirm dialog is accepted).
        bob = USERS[1]
        with page.expect_navigation():
            page.select_option("#memory-user", bob)
        assert page.locator("#memory-list li").count() == 2
        page.click("#forget-user")
        page.locator("#memory-message", has_text="Forgot").wait_for()
        assert browser.dialogs == [f"confirm: Forget everything remembered for {bob}? This cannot be undone."]
        assert data.memory.list(bob)[0] == 0
        assert data.memory.list(alice)[0] == 3

        # The periodic refresh picks up new calls without reloading the page.
        data.usage.insert([UsageRow(time.time(), "dave-new", "curl", "fast", "openai", "gpt-4o-mini", "openai",
                                    200, None, 1234, 56, 0, 0.0002, 300.0, 90.0, False, True, "routed", None)])
        page.evaluate("refresh()")
        page.locator("#tokens-chart rect[data-user='dave-new']").wait_for()

        _open(browser, server.origin + "/memory-routing/?range=7d")
        shot = browser.screenshot(tmp_path / "dashboard.png")
        copy_to = os.environ.get("DASHBOARD_SCREENSHOT")
        if copy_to:
            shutil.copyfile(shot, copy_to)

        assert browser.requests, "the recorder saw no request"
        assert browser.requests_leaving(server.origin) == []
        assert not any(url.endswith("/x") for url in browser.requests)  # the <img src=x> never loaded
        assert browser.console_errors == []
        assert page.evaluate("window.__xss") is None
