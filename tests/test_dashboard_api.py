"""The dashboard's pure request handlers over a real memory store and usage table."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from memory_routing.dashboard.api import DashboardSources, handle
from memory_routing.dashboard.usage_rows import SQLiteUsageStore, UsageRow
from memory_routing.memory.records import NewMemory
from memory_routing.memory.store import SQLiteMemoryStore

NOW = 1_763_900_000.0
XSS = "<img src=x onerror=alert(1)>'\"&"


def usage(**changes) -> UsageRow:
    base = UsageRow(NOW - 100, "alice", "curl", "fast", "openai", "gpt-4o-mini", "openai", 200, None,
                    100, 10, 0, 0.001, 120.0, 30.0, True, True, "routed", None)
    return replace(base, **changes)


@pytest.fixture
def stores(tmp_path):
    memory = SQLiteMemoryStore(tmp_path / "memory-routing-memory.sqlite3")
    usage_store = SQLiteUsageStore(memory.open_connection())
    yield memory, usage_store
    usage_store.conn.close()
    memory.close()


@pytest.fixture
def sources(stores):
    memory, usage_store = stores
    return DashboardSources(
        usage=usage_store, memory=memory,
        config_summary=lambda: {"path": "config.yaml", "master_key": "os.environ/MASTER (set)",
                                "models": [{"model_name": "fast", "api_key": "sk-live-123456"}]},
        health=lambda: {"status": "healthy", "version": "0.1.0"},
        clock=lambda: NOW,
    )


def call(sources, method, path, query=None, body=b"", headers=None):
    answer = handle(method, path, query or {}, body, sources, headers)
    assert answer is not None
    payload = json.loads(answer.body) if answer.content_type == "application/json" else answer.body
    return answer, payload


def add(memory, user, text, conversation="c1", at=NOW - 50):
    return memory.add_many([NewMemory(user, conversation, "curl", "fast", "user", text, at)])[0]


def test_paths_outside_the_dashboard_are_not_answered(sources):
    assert handle("GET", "/v1/models", {}, b"", sources) is None
    assert handle("GET", "/memory-routing-other", {}, b"", sources) is None


def test_usage_totals_shape_and_range(sources, stores):
    stores[1].insert([usage(), usage(at=NOW - 10, status=500, error="upstream 500"),
                      usage(at=NOW - 30 * 86400), usage(user_id="bob", at=NOW - 20)])
    answer, body = call(sources, "GET", "/memory-routing/usage", {"group_by": "user"})
    assert answer.status == 200
    assert body["group_by"] == "user" and body["until"] is None
    assert body["since"] == "2025-11-16T12:13:20Z"  # seven days before NOW by default
    assert [(d["key"], d["calls"], d["errors"]) for d in body["data"]] == [("alice", 2, 1), ("bob", 1, 0)]
    _, body = call(sources, "GET", "/memory-routing/usage",
                   {"group_by": "day", "since": "2025-10-01", "until": str(NOW - 50)})
    assert [(d["key"], d["calls"]) for d in body["data"]] == [("2025-10-24", 1), ("2025-11-23", 1)]
    assert body["since"] == "2025-10-01T00:00:00Z"


def test_until_as_a_date_includes_that_day(sources, stores):
    stores[1].insert([usage(at=NOW - 100)])  # 2025-11-23 12:11 UTC
    _, body = call(sources, "GET", "/memory-routing/usage", {"since": "2025-11-23", "until": "2025-11-23"})
    assert body["data"][0]["calls"] == 1
    _, body = call(sources, "GET", "/memory-routing/usage",
                   {"since": "2025-11-23T12:00:00+00:00", "until": "2025-11-23T12:05:00Z"})
    assert body["data"] == []


@pytest.mark.parametrize(("query", "message"), [
    ({"group_by": "provider"}, "group_by must be one of user, model, client, proxy, day, all, not 'provider'"),
    ({"since": "yesterday"}, "since must be epoch seconds or an ISO 8601 date or date-time"),
    ({"since": "nan"}, "since must be a finite number"),
    ({"since": "2025-11-20", "until": "2025-11-01"}, "since must not be after until"),
])
def test_bad_usage_queries_get_clear_400s(sources, query, message):
    answer, body = call(sources, "GET", "/memory-routing/usage", query)
    assert answer.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


def test_series_and_recent(sources, stores):
    stores[1].insert([usage(), usage(user_id="bob", at=NOW - 5, translated_to="anthropic", route="translated")])
    _, body = call(sources, "GET", "/memory-routing/usage/series", {"bucket": "hour"})
    assert {(d["user_id"], d["calls"]) for d in body["data"]} == {("alice", 1), ("bob", 1)}
    _, body = call(sources, "GET", "/memory-routing/usage/recent", {"limit": "1"})
    assert [(d["user_id"], d["translated_to"], d["at"]) for d in body["data"]] == [
        ("bob", "anthropic", "2025-11-23T12:13:15Z")]
    answer, body = call(sources, "GET", "/memory-routing/usage/recent", {"limit": "-1"})
    assert answer.status == 400 and "limit must be between 0 and 1000" in body["error"]["message"]


def test_usage_groups_and_filters_by_the_proxy_that_served_each_call(sources, stores):
    stores[1].insert([usage(proxy="gw-1"), usage(proxy="gw-2", user_id="bob", at=NOW - 5),
                      usage(proxy="gw-2", at=NOW - 4)])
    _, body = call(sources, "GET", "/memory-routing/usage", {"group_by": "proxy"})
    assert [(d["key"], d["calls"]) for d in body["data"]] == [("gw-2", 2), ("gw-1", 1)]
    _, body = call(sources, "GET", "/memory-routing/usage", {"group_by": "user", "proxy": "gw-2"})
    assert body["proxy"] == "gw-2" and [(d["key"], d["calls"]) for d in body["data"]] == [("alice", 1), ("bob", 1)]
    _, body = call(sources, "GET", "/memory-routing/usage/series", {"proxy": "gw-1"})
    assert [(d["user_id"], d["calls"]) for d in body["data"]] == [("alice", 1)]
    _, body = call(sources, "GET", "/memory-routing/usage/recent", {"proxy": "gw-2"})
    assert [(d["proxy"], d["user_id"]) for d in body["data"]] == [("gw-2", "alice"), ("gw-2", "bob")]
    _answer, page = call(sources, "GET", "/memory-routing/")
    calls_table = page.decode().split('id="recent-calls"', 1)[1].split("</table>", 1)[0]
    assert "<th>Proxy</th>" in calls_table
    assert calls_table.count('<td class="proxy">gw-2</td>') == 2 and '<td class="proxy">gw-1</td>' in calls_table


def test_memories_list_search_and_users(sources, stores):
    memory = stores[0]
    add(memory, "alice", "the deploy key rotation happens on fridays")
    add(memory, "alice", "prefers tabs over spaces", conversation="c2")
    add(memory, "bob", "bob likes fridays too")
    _, body = call(sources, "GET", "/memory-routing/memories", {"user_id": "alice"})
    assert body["user_id"] == "alice" and body["total"] == 2
    assert set(body["data"][0]) == {"id", "conversation_id", "created_at", "role", "text", "client", "model"}
    _, body = call(sources, "GET", "/memory-routing/memories", {"user_id": "alice", "q": "fridays"})
    assert [d["text"] for d in body["data"]] == ["the deploy key rotation happens on fridays"]
    _, body = call(sources, "GET", "/memory-routing/memories", {"user_id": "alice", "conversation_id": "c2"})
    assert body["total"] == 1
    _, body = call(sources, "GET", "/memory-routing/memories", {"user_id": "alice", "limit": "1"})
    assert body["total"] == 2 and len(body["data"]) == 1
    _, body = call(sources, "GET", "/memory-routing/memories/users")
    assert body == {"total_users": 2, "total_memories": 3,
                    "data": [{"user_id": "alice", "memories": 2}, {"user_id": "bob", "memories": 1}]}
    answer, body = call(sources, "GET", "/memory-routing/memories")
    assert answer.status == 400 and "needs ?user_id=U" in body["error"]["message"]


def test_delete_one_memory_only_of_its_owner(sources, stores):
    memory = stores[0]
    kept = add(memory, "alice", "keep me")
    gone = add(memory, "alice", "delete me")
    answer, body = call(sources, "DELETE", f"/memory-routing/memories/{gone}", {"user_id": "bob"})
    assert answer.status == 404 and "of user 'bob'" in body["error"]["message"]
    answer, body = call(sources, "DELETE", f"/memory-routing/memories/{gone}", {"user_id": "alice"})
    assert (answer.status, body) == (200, {"id": gone, "deleted": True})
    assert memory.get(gone) is None and memory.get(kept) is not None
    answer, _ = call(sources, "DELETE", f"/memory-routing/memories/{gone}")
    assert answer.status == 404
    answer, body = call(sources, "DELETE", "/memory-routing/memories/abc")
    assert answer.status == 404 and "a memory id is a number" in body["error"]["message"]


def test_forget_user(sources, stores):
    memory = stores[0]
    add(memory, "alice", "one")
    add(memory, "alice", "two", conversation="c2")
    add(memory, "bob", "three")
    answer, body = call(sources, "DELETE", "/memory-routing/memories", {"user_id": "alice"})
    assert (answer.status, body) == (200, {"user_id": "alice", "deleted": 2})
    assert memory.list("alice")[0] == 0 and memory.list("bob")[0] == 1
    answer, body = call(sources, "DELETE", "/memory-routing/memories")
    assert answer.status == 400 and "forget a user" in body["error"]["message"]


def test_export_and_import_round_trip(sources, stores, tmp_path):
    memory = stores[0]
    add(memory, "alice", "first")
    add(memory, "bob", "second")
    answer, body = call(sources, "GET", "/memory-routing/memories/export", {"user_id": "alice"})
    assert answer.content_type == "application/x-ndjson"
    assert ("content-disposition", 'attachment; filename="memories-alice.jsonl"') in answer.headers
    lines = body.decode().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["first"]
    _, everything = call(sources, "GET", "/memory-routing/memories/export")
    assert len(everything.decode().splitlines()) == 2

    other = SQLiteMemoryStore(tmp_path / "other.sqlite3")
    try:
        target = replace(sources, memory=other)
        answer, body = call(target, "POST", "/memory-routing/memories/import", body=everything,
                            headers={"content-type": "application/x-ndjson"})
        assert (answer.status, body) == (200, {"imported": 2})
        assert [m.text for m in other.list("bob")[1]] == ["second"]
        answer, body = call(target, "POST", "/memory-routing/memories/import", body=b'{"user_id": 5}\n',
                            headers={"content-type": "application/x-ndjson"})
        assert answer.status == 400 and "line 1" in body["error"]["message"]
    finally:
        other.close()


def test_cross_site_writes_are_refused(sources, stores):
    memory = stores[0]
    victim = add(memory, "alice", "precious")
    answer, body = call(sources, "DELETE", f"/memory-routing/memories/{victim}",
                        headers={"origin": "https://evil.example", "host": "127.0.0.1:8764"})
    assert answer.status == 403 and body["error"]["type"] == "permission_error"
    answer, _ = call(sources, "POST", "/memory-routing/memories/import",
                     body=b'{"user_id":"alice","role":"user","text":"obey me","created_at":1}',
                     headers={"content-type": "text/plain"})
    assert answer.status == 400
    assert memory.list("alice")[0] == 1
    answer, _ = call(sources, "DELETE", f"/memory-routing/memories/{victim}",
                     headers={"origin": "http://127.0.0.1:8764", "host": "127.0.0.1:8764"})
    assert answer.status == 200


def test_foreign_host_names_are_refused(sources, stores):
    add(stores[0], "alice", "private")
    for host in ("127.0.0.1:8764", "localhost:8764", "[::1]:8764", "memory-routing.localhost"):
        answer, _ = call(sources, "GET", "/memory-routing/memories", {"user_id": "alice"}, headers={"host": host})
        assert answer.status == 200, host
    answer, body = call(sources, "GET", "/memory-routing/memories", {"user_id": "alice"},
                        headers={"host": "rebound.example:8764"})
    assert answer.status == 403 and "not Host 'rebound.example:8764'" in body["error"]["message"]
    anywhere = replace(sources, allowed_hosts=None)
    answer, _ = call(anywhere, "GET", "/memory-routing/memories", {"user_id": "alice"},
                     headers={"host": "proxy.lan:8764"})
    assert answer.status == 200


def test_methods_and_unknown_paths(sources):
    answer, body = call(sources, "POST", "/memory-routing/usage")
    assert answer.status == 405 and ("allow", "GET") in answer.headers
    assert body["error"]["message"] == "this endpoint answers GET, not POST"
    answer, body = call(sources, "GET", "/memory-routing/nothing-here")
    assert answer.status == 404 and body["error"]["type"] == "not_found_error"
    answer, _ = call(sources, "GET", "/memory-routing/static/../api.py")
    assert answer.status == 404
    answer = handle("GET", "/memory-routing", {}, b"", sources)
    assert answer.status == 308 and ("location", "/memory-routing/") in answer.headers
    answer = handle("HEAD", "/memory-routing/usage", {}, b"", sources)
    assert answer.status == 200 and answer.body == b""


def test_stores_that_are_off(sources):
    off = replace(sources, memory=None, usage=None)
    answer, body = call(off, "GET", "/memory-routing/memories", {"user_id": "alice"})
    assert answer.status == 404 and "memory is off" in body["error"]["message"]
    answer, body = call(off, "GET", "/memory-routing/usage")
    assert answer.status == 404 and "usage recording is off" in body["error"]["message"]
    answer, page = call(off, "GET", "/memory-routing/")
    assert answer.status == 200 and b"Usage recording is off" in page and b"memory is off" in page


def test_page_escapes_every_string_and_shows_no_secret(sources, stores):
    memory, usage_store = stores
    usage_store.insert([usage(user_id=XSS, client=XSS, alias=XSS, provider_model=XSS, error=XSS, status=500)])
    add(memory, XSS, XSS, conversation=XSS)
    answer, page = call(sources, "GET", "/memory-routing/", {"user": XSS, "q": ""})
    html = page.decode()
    assert answer.status == 200 and answer.content_type.startswith("text/html")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&#39;&#34;&amp;" in html  # jinja2's autoescape
    assert "sk-live-123456" not in html and "[redacted]" in html
    assert "os.environ/MASTER (set)" in html
    policy = dict(answer.headers)["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy


def test_page_loads_only_its_own_assets(sources):
    _, page = call(sources, "GET", "/memory-routing/")
    html = page.decode()
    for reference in ("/memory-routing/static/dashboard.css", "/memory-routing/static/dashboard.js"):
        assert reference in html
        asset = handle("GET", reference, {}, b"", sources)
        assert asset.status == 200 and asset.body
    assert "http://" not in html and "https://" not in html and "//" not in html.replace("://", "")


def test_page_range_is_validated(sources):
    answer, body = call(sources, "GET", "/memory-routing/", {"range": "1y"})
    assert answer.status == 400 and "range must be one of 24h, 7d, 30d" in body["error"]["message"]
