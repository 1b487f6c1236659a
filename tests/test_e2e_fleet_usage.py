"""End-to-end: two mitmdump processes write their usage rows to one PostgreSQL, and each one's
usage API shows both proxies' calls, each with the name of the proxy that served it. While the
database is down, a call is still answered, its row waits in the proxy (counted in
/memory-routing/info), the dashboard answers 503 in its JSON shape, and the row is written when
the database returns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from fake_upstream import FakeUpstream
from fleet_servers import PostgresServer
from harness import RunningProxy, running_proxy, wait_until
from test_e2e_translation import fake  # noqa: F401 - the strict fake upstream, module-scoped

pytestmark = pytest.mark.e2e

WAIT_S = 45.0
KEYS = {"MR_FLEET_OPENAI_KEY": "sk-fleet-usage-0301"}


def fleet_config(fake_url: str, proxy_name: str | None) -> str:
    storage: dict[str, str] = {"database_url": "os.environ/MR_FLEET_DATABASE_URL"}
    if proxy_name:
        storage["proxy_name"] = proxy_name
    return json.dumps({
        "model_list": [{"model_name": "fast", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_FLEET_OPENAI_KEY"}}],
        "user_id_mappings": {"default_user_id": "fleet-dev"},
        "storage": storage,
    })


@pytest.fixture
def proxies(tmp_path: Path, fake: FakeUpstream, database_url: str) -> Iterator[dict[str, RunningProxy]]:
    """proxy-a names itself in the config; proxy-b through MEMORY_ROUTING_PROXY_NAME."""
    fake_url = f"http://127.0.0.1:{fake.server.server_address[1]}"
    with ExitStack() as stack:
        running = {}
        for name, configured in (("proxy-a", "proxy-a"), ("proxy-b", None)):
            workdir = tmp_path / name
            workdir.mkdir()
            config = workdir / "config.yaml"
            config.write_text(fleet_config(fake_url, configured))
            env = {**KEYS, "MR_FLEET_DATABASE_URL": database_url, "MEMORY_ROUTING_PROXY_NAME": name}
            running[name] = stack.enter_context(running_proxy(workdir, config, env=env))
        yield running


def chat(proxy: RunningProxy, text: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="unused", max_retries=0, timeout=WAIT_S,
                           default_headers={"x-memory-user-id": "alice", "x-memory-mode": "off"})
    answer = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": text}])
    assert answer.choices[0].message.content


def calls_per_proxy(proxy: RunningProxy) -> dict[str, int] | None:
    answer = httpx.get(f"{proxy.gateway_url}/memory-routing/usage", params={"group_by": "proxy"}, timeout=WAIT_S)
    if answer.status_code != 200:
        return None
    return {row["key"]: row["calls"] for row in answer.json()["data"]}


def usage_writer(proxy: RunningProxy) -> dict[str, int]:
    info = httpx.get(f"{proxy.gateway_url}/memory-routing/info", timeout=WAIT_S).json()
    return info["store"]["usage_writer"]


def test_each_proxy_shows_the_whole_fleets_calls_and_keeps_rows_through_an_outage(
        proxies: dict[str, RunningProxy], postgres_server: PostgresServer) -> None:
    a, b = proxies["proxy-a"], proxies["proxy-b"]
    for n in range(2):
        chat(a, f"through a {n}")
    for n in range(3):
        chat(b, f"through b {n}")
    both = {"proxy-a": 2, "proxy-b": 3}
    for proxy in (a, b):
        assert wait_until(lambda proxy=proxy: calls_per_proxy(proxy) == both, WAIT_S), calls_per_proxy(proxy)
    recent = httpx.get(f"{b.gateway_url}/memory-routing/usage/recent", timeout=WAIT_S).json()["data"]
    assert sorted(row["proxy"] for row in recent) == ["proxy-a"] * 2 + ["proxy-b"] * 3
    only_a = httpx.get(f"{b.gateway_url}/memory-routing/usage/recent", params={"proxy": "proxy-a"},
                       timeout=WAIT_S).json()["data"]
    assert [row["proxy"] for row in only_a] == ["proxy-a", "proxy-a"]
    page = httpx.get(f"{b.gateway_url}/memory-routing/", timeout=WAIT_S)
    assert page.status_code == 200 and '<td class="proxy">proxy-a</td>' in page.text

    postgres_server.stop()
    try:
        chat(a, "while the database is down")  # still answered
        assert wait_until(lambda: usage_writer(a)["outage_queued"] == 1, WAIT_S), usage_writer(a)
        down = httpx.get(f"{a.gateway_url}/memory-routing/usage", timeout=WAIT_S)
        assert down.status_code == 503 and down.headers["content-type"] == "application/json"
        assert down.headers["retry-after"] == "10"
        assert down.json()["error"]["type"] == "service_unavailable"
        info = httpx.get(f"{a.gateway_url}/memory-routing/info", timeout=WAIT_S).json()["store"]
        assert info["usage_calls"] is None and "usage_unavailable" in info
        assert "MR_FLEET" not in json.dumps(info) and "password" not in json.dumps(info)
    finally:
        postgres_server.start()
    assert wait_until(lambda: calls_per_proxy(b) == {"proxy-a": 3, "proxy-b": 3}, WAIT_S), calls_per_proxy(b)
    writer = usage_writer(a)
    assert (writer["outage_queued"], writer["outage_dropped"], writer["written"]) == (0, 0, 3)
