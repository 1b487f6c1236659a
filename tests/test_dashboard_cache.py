"""The prompt cache and the memory's own cost on the dashboard: the usage API, the chart axes,
and the page in headless Chromium (tiles, the per-user table, readable y-axis labels, Health)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser import chromium_page
from test_dashboard_api import NOW, call, sources, stores, usage  # noqa: F401  (fixtures)
from test_dashboard_browser import DashboardServer

from memory_routing.dashboard import charts
from memory_routing.dashboard.api import DashboardSources
from memory_routing.dashboard.page import usd_axis
from memory_routing.dashboard.usage_rows import SQLiteUsageStore, UsageRow
from memory_routing.memory.store import SQLiteMemoryStore

# Two calls of alice: Sonnet 4.5 reading 50,000 prompt tokens from its cache and writing 2,000
# (LiteLLM's $0.0273, $0.1335 less than with no cache), with an 80-token recall block; and a
# call with no cache. Bob: one cheap call. In the last 24 hours the busiest hour cost $0.00024,
# so the cost chart's axis runs in ten-thousandths (where "$0.0001875" was cut to "0001875").
CACHED = {"provider": "anthropic", "provider_model": "claude-sonnet-4-5", "input_tokens": 52_100, "output_tokens": 300,
          "cached_tokens": 50_000, "cache_write_tokens": 2000, "reasoning_tokens": 0, "cost_usd": 0.0273,
          "cache_saved_usd": 0.1335, "memory_tokens": 80, "memory_cost_usd": 0.00024, "memory_injected": True}
UNCACHED = {"input_tokens": 47_900, "output_tokens": 100, "cached_tokens": 0, "cost_usd": 0.00024, "memory_tokens": None}


def rows(now: float) -> list[UsageRow]:
    return [
        usage(at=now - 2 * 86400, **CACHED),
        usage(at=now - 1800, **UNCACHED),
        usage(at=now - 900, user_id="bob", input_tokens=400, output_tokens=20, cached_tokens=0, cost_usd=0.0000725,
              memory_injected=False),
    ]


def test_the_usage_api_carries_cache_reasoning_and_memory_figures(sources, stores):
    _, usage_store = stores
    usage_store.insert(rows(NOW))
    _, body = call(sources, "GET", "/memory-routing/usage", {"group_by": "user"})
    alice = next(group for group in body["data"] if group["key"] == "alice")
    assert (alice["cache_read_tokens"], alice["cached_tokens"], alice["cache_write_tokens"]) == (50_000, 50_000, 2000)
    assert alice["cache_hit_ratio"] == 0.5
    assert (alice["cache_saved_usd"], alice["memory_tokens"], alice["memory_cost_usd"]) == (0.1335, 80, 0.00024)
    _, body = call(sources, "GET", "/memory-routing/usage/recent", {"limit": "3"})
    cached = next(row for row in body["data"] if row["cache_write_tokens"])
    assert (cached["cache_read_tokens"], cached["cached_tokens"], cached["reasoning_tokens"]) == (50_000, 50_000, 0)
    assert (cached["memory_tokens"], cached["memory_cost_usd"], cached["cache_saved_usd"]) == (80, 0.00024, 0.1335)


@pytest.mark.parametrize("peak", [0.0000725, 0.0001875, 0.000999, 0.0273, 0.5, 3.69, 1234.5])
def test_a_y_axis_is_round_and_wide_enough_for_its_labels(peak):
    axis = charts.Axis.over(peak, usd_axis)
    assert axis.top >= peak and axis.labels[0] == "$0"
    values = [float(label.lstrip("$").replace(",", "")) for label in axis.labels]
    assert values == pytest.approx([axis.top * i / charts.Y_TICKS for i in range(charts.Y_TICKS + 1)], rel=1e-9)
    assert all(len(label) <= 9 for label in axis.labels)  # "$0.00015", not "$0.0001875"
    chart = charts.stacked_bars("cost-chart", [("Nov 25", {"bob": peak})], {"bob": "#000"}, usd_axis)
    assert all(text.x - charts.AXIS_CHAR_PX * len(text.text) >= 0 for text in chart.texts if "y" in text.kind.split())


@pytest.fixture
def dashboard(tmp_path: Path):
    memory = SQLiteMemoryStore(tmp_path / "memory-routing-memory.sqlite3")
    usage_store = SQLiteUsageStore(memory.open_connection())
    usage_store.insert(rows(time.time()))
    sources = DashboardSources(usage=usage_store, memory=memory,
                               health=lambda: {"status": "healthy", "memory": {"local": True, "writer_alive": False}})
    with DashboardServer(sources) as server:
        yield server
    usage_store.conn.close()
    memory.close()


def test_the_page_shows_the_cache_and_what_memory_costs_in_chromium(tmp_path: Path, dashboard: DashboardServer):
    with chromium_page(tmp_path) as browser:
        page = browser.page
        response = page.goto(dashboard.origin + "/memory-routing/?range=7d", wait_until="load")
        assert response is not None and response.status == 200

        def tile(name: str) -> tuple[str, str]:
            return (page.locator(f"#tile-{name} .value").inner_text(), page.locator(f"#tile-{name} .muted").inner_text())

        # 50,000 of 100,400 input tokens came from the cache.
        assert tile("cache") == ("49.8%", "50.0k read, 2.0k written")
        assert tile("cache-saved")[0] == "$0.1335"
        assert tile("memory") == ("$0.0002", "80 tokens in 1 recall block")
        alice = page.locator("#per-user tr[data-key='alice']")
        assert alice.locator(".cache-hits").inner_text() == "50.0%"  # 50,000 of 100,000
        assert alice.locator(".memory-tokens").inner_text() == "80"
        assert alice.locator(".memory-cost").inner_text() == "$0.0002"
        assert page.locator("#per-user tr[data-key='bob'] .memory-cost").inner_text() == "–"

        # Every y-axis label is whole and inside its chart: none is cut at the left edge.
        response = page.goto(dashboard.origin + "/memory-routing/?range=24h", wait_until="load")
        assert response is not None and response.status == 200
        for chart_id in ("cost-chart", "tokens-chart"):
            svg = page.locator(f"#{chart_id}").bounding_box()
            labels = page.locator(f"#{chart_id} text.y")
            assert labels.count() == charts.Y_TICKS + 1
            for index in range(labels.count()):
                box = labels.nth(index).bounding_box()
                assert box is not None and box["x"] >= svg["x"] - 0.5, (chart_id, labels.nth(index).text_content())
        cost_labels = page.locator("#cost-chart text.y").all_text_contents()
        assert all(re.fullmatch(r"\$\d+(\.\d+)?", label) for label in cost_labels), cost_labels
        assert cost_labels == ["$0", "$0.0001", "$0.0002", "$0.0003", "$0.0004"]  # holds the busiest hour's $0.00024

        # The Health panel says yes and no, not Python's True and False.
        health = page.locator("#health").inner_text()
        assert "True" not in health and "False" not in health
        assert re.search(r"local\s+yes", health) and re.search(r"writer_alive\s+no", health)
        assert browser.console_errors == []
        assert browser.requests_leaving(dashboard.origin) == []
