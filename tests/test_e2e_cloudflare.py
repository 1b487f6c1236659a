"""End-to-end: the cookie jar, the in-flight cap and Cloudflare's error pages, through a real mitmdump."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from fake_upstream import FakeUpstream
from harness import RunningProxy, running_proxy, start_proxy, wait_until

pytestmark = pytest.mark.e2e

WAIT = 30
USER_AGENTS = ["claude-cli/2.1.0 (external, cli)", "OpenAIClientImpl/Java 2.8.1", "OpenAI/Python 2.1.0", "curl/8.5.0"]
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def write_config(path: Path, fakes: dict[str, FakeUpstream]) -> Path:
    path.write_text(yaml.safe_dump({
        "model_list": [
            {"model_name": alias,
             "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1", "api_key": "sk-cf"}}
            for alias, fake in fakes.items()
        ],
    }))
    return path


@pytest.fixture
def fake_a() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(cloudflare=True).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_b() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(host="127.0.0.2").start()  # another host: cookies must not cross over
    yield fake
    fake.stop()


@pytest.fixture
def start_fake() -> Iterator:
    """Start fake upstreams with the given behaviour; all are stopped after the test."""
    started: list[FakeUpstream] = []

    def start(**behaviour) -> FakeUpstream:
        started.append(FakeUpstream(**behaviour).start())
        return started[-1]

    yield start
    for fake in started:
        fake.stop()


def chat(proxy: RunningProxy, model: str, user_agent: str = "curl/8.5.0",
         headers: dict[str, str] | None = None) -> httpx.Response:
    # A new client connection per call, as the issue asks.
    with httpx.Client(timeout=WAIT) as client:
        return client.post(f"{proxy.gateway_url}/v1/chat/completions", json={"model": model, **CHAT},
                           headers={"user-agent": user_agent, **(headers or {})})


def cookies_seen(fake: FakeUpstream) -> list[str]:
    return [r.headers.get("cookie", "") for r in fake.requests]


def test_cloudflare_cookie_keeps_sequential_and_concurrent_requests_through(tmp_path: Path, fake_a: FakeUpstream):
    config = write_config(tmp_path / "config.yaml", {"cf": fake_a})
    with running_proxy(tmp_path, config) as proxy:
        statuses = [chat(proxy, "cf", USER_AGENTS[i % len(USER_AGENTS)]).status_code for i in range(100)]
        assert statuses == [200] * 100
        assert cookies_seen(fake_a)[0] == "" and all(c == f"__cf_bm={fake_a.cf_token}" for c in cookies_seen(fake_a)[1:])

        with ThreadPoolExecutor(max_workers=100) as pool:
            concurrent = list(pool.map(lambda i: chat(proxy, "cf", USER_AGENTS[i % 4]).status_code, range(100)))
        assert concurrent == [200] * 100

        _, info = proxy_info(proxy)
        assert info["upstreams"]["cookies"] == [{
            "scope": "machine", "name": "__cf_bm", "domain": "127.0.0.1", "path": "/", "secure": False,
            "expires": info["upstreams"]["cookies"][0]["expires"],
        }]
        assert fake_a.cf_token not in json.dumps(info)
        assert fake_a.cf_token not in proxy.log()

    # Restarted: the first request already carries the cookie, read back from the jar file.
    jar_file = proxy.confdir / "memory-routing-cookies.json"
    assert oct(jar_file.stat().st_mode & 0o777) == "0o600"
    fake_a.reset()
    with running_proxy(tmp_path, config) as proxy:
        assert chat(proxy, "cf").status_code == 200
        assert cookies_seen(fake_a) == [f"__cf_bm={fake_a.cf_token}"]


def test_the_last_cookie_changes_are_saved_when_the_proxy_stops(tmp_path: Path, fake_b: FakeUpstream):
    config = write_config(tmp_path / "config.yaml", {"b": fake_b})
    with running_proxy(tmp_path, config) as proxy:
        for value in ("first", "second", "third"):
            # Changes within a second of a save wait for the next one: at the latest, when mitmdump stops.
            assert chat(proxy, "b", headers={"x-fake-set-cookie": f"__cf_bm={value}; Path=/"}).status_code == 200
    fake_b.reset()
    with running_proxy(tmp_path, config) as proxy:
        assert chat(proxy, "b").status_code == 200
    assert cookies_seen(fake_b) == ["__cf_bm=third"]


def proxy_info(proxy: RunningProxy) -> tuple[int, dict]:
    response = httpx.get(f"{proxy.gateway_url}/memory-routing/info", timeout=WAIT)
    return response.status_code, response.json()


def test_cookie_rules(tmp_path: Path, fake_b: FakeUpstream, start_fake):
    # Expiry is driven by the dates the upstream sends (Max-Age=0, Expires in the past or far
    # ahead), never by waiting: the jar's reading of the clock as time passes is covered by
    # test_cookie_jar's expiry test, with the clock moved instead of slept through.
    fake_a = start_fake()
    config = write_config(tmp_path / "config.yaml", {"a": fake_a, "b": fake_b})
    with running_proxy(tmp_path, config) as proxy:
        set_on_a = ["__cf_bm=keep; Path=/", "cf_clearance=secure-only; Path=/; Secure", "session=not-cloudflare; Path=/",
                    "_cfuvid=expired-later-by-the-upstream; Path=/",
                    "__cfruid=max-age-wins; Path=/; Max-Age=0; Expires=Wed, 01 Jan 2099 00:00:00 GMT",
                    "__cfwaitingroom=max-age-wins-too; Path=/; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=1800",
                    "__cflb=other-path; Path=/elsewhere"]
        with httpx.Client(timeout=WAIT) as client:
            response = client.post(f"{proxy.gateway_url}/v1/chat/completions", json={"model": "a", **CHAT},
                                   headers=[("x-fake-set-cookie", value) for value in set_on_a])
        assert response.status_code == 200
        # The upstream expires one of its cookies (a date in the past): it is no longer sent.
        expire = {"x-fake-set-cookie": "_cfuvid=; Path=/; Expires=Thu, 01 Jan 1970 00:00:01 GMT"}
        assert chat(proxy, "a", headers=expire).status_code == 200
        assert fake_a.requests[-1].headers.get("cookie", "") == (
            "__cf_bm=keep; _cfuvid=expired-later-by-the-upstream; __cfwaitingroom=max-age-wins-too"
        )
        assert chat(proxy, "a", headers={"cookie": "mine=client-own"}).status_code == 200
        sent_to_a = fake_a.requests[-1].headers.get("cookie", "")
        # The client's own kept; only the valid jar cookies added.
        assert sent_to_a == "mine=client-own; __cf_bm=keep; __cfwaitingroom=max-age-wins-too"
        assert chat(proxy, "b").status_code == 200
        assert "cookie" not in fake_b.requests[-1].headers  # a cookie of host A never reaches host B


def test_in_flight_cap_is_never_exceeded(tmp_path: Path, start_fake):
    # The upstream holds every request until released: the cap's worth reach it at once and the
    # rest wait in the proxy's queue, whatever the machine's speed (no delay to make them overlap).
    fake = start_fake(hold_requests=True)
    config = write_config(tmp_path / "config.yaml", {"slow": fake})
    with running_proxy(tmp_path, config, extra_args=["--set", "memory_routing_max_in_flight=4"]) as proxy:
        with ThreadPoolExecutor(max_workers=50) as pool:
            calls = [pool.submit(lambda: chat(proxy, "slow").status_code) for _ in range(50)]
            try:
                assert wait_until(lambda: fake.in_flight == 4 and queued(proxy) == 46, timeout=WAIT)
                assert fake.max_in_flight == 4
            finally:
                fake.release()
            statuses = [call.result(WAIT) for call in calls]
    assert statuses == [200] * 50
    assert len(fake.requests) == 50
    assert fake.max_in_flight == 4


def queued(proxy: RunningProxy) -> int:
    _, info = proxy_info(proxy)
    return sum(host["queued"] for host in info["upstreams"]["in_flight"].values())


def test_queued_requests_go_in_arrival_order(tmp_path: Path, start_fake):
    fake = start_fake(hold_requests=True)
    config = write_config(tmp_path / "config.yaml", {"slow": fake})
    with running_proxy(tmp_path, config, extra_args=["--set", "memory_routing_max_in_flight=1"]) as proxy:
        callers = []
        for index in range(5):
            callers.append(threading.Thread(target=chat, args=(proxy, "slow"), kwargs={"headers": {"x-seq": str(index)}}))
            callers[-1].start()
            # The next one starts only once this one holds the slot (the first) or waits in the queue.
            assert wait_until(lambda index=index: fake.in_flight == 1 if index == 0 else queued(proxy) == index)
        fake.release()
        for caller in callers:
            caller.join(WAIT)
    assert [r.headers["x-seq"] for r in fake.requests] == ["0", "1", "2", "3", "4"]
    assert fake.max_in_flight == 1


def test_queue_timeout_answers_503_with_retry_after(tmp_path: Path, start_fake):
    fake = start_fake(hold_requests=True)
    config = write_config(tmp_path / "config.yaml", {"slow": fake})
    args = ["--set", "memory_routing_max_in_flight=1", "--set", "memory_routing_queue_timeout=1"]
    with running_proxy(tmp_path, config, extra_args=args) as proxy:
        first = threading.Thread(target=chat, args=(proxy, "slow"), daemon=True)
        first.start()
        assert wait_until(lambda: fake.in_flight == 1)  # the first holds the one slot
        client = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk", max_retries=0, timeout=WAIT)
        try:
            with pytest.raises(openai.InternalServerError) as excinfo:
                client.chat.completions.create(model="slow", **CHAT)
        finally:
            fake.release()
        first.join(WAIT)
    assert excinfo.value.status_code == 503
    assert excinfo.value.response.headers["retry-after"] == "1"
    assert "waited 1 s for a slot" in excinfo.value.body["message"]
    assert len(fake.requests) == 1


def test_cloudflare_1200_page_reaches_the_client_in_its_own_shape(tmp_path: Path, fake_b: FakeUpstream):
    config = write_config(tmp_path / "config.yaml", {"b": fake_b})
    entries = yaml.safe_load(config.read_text())
    entries["model_list"].append(
        {"model_name": "claude-b", "litellm_params": {"model": "anthropic/claude-haiku-4-5", "api_base": fake_b.url}}
    )
    config.write_text(yaml.safe_dump(entries))
    with running_proxy(tmp_path, config) as proxy:
        client = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk", max_retries=0, timeout=WAIT)
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as excinfo:
                client.chat.completions.create(model="b", **CHAT, extra_headers={"x-fake-cloudflare-error": "1200"})
        assert excinfo.value.response.headers["retry-after"] == "10"
        assert "error 1200: too many requests queued at its edge" in excinfo.value.body["message"]
        assert proxy.wait_for_log("Cloudflare in front of 127.0.0.2")
        assert proxy.log().count("Cloudflare in front of 127.0.0.2") == 1  # once per burst

        anthropic_style = httpx.post(
            f"{proxy.gateway_url}/v1/messages", timeout=WAIT,
            headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-ant", "x-fake-cloudflare-error": "1200"},
            json={"model": "claude-b", "max_tokens": 5, **CHAT},
        )
    assert anthropic_style.status_code == 429
    assert anthropic_style.headers["retry-after"] == "10"
    assert anthropic_style.json()["type"] == "error"
    assert anthropic_style.json()["error"]["type"] == "rate_limit_error"


def test_corrupt_jar_file_is_set_aside(tmp_path: Path, fake_b: FakeUpstream):
    config = write_config(tmp_path / "config.yaml", {"b": fake_b})
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    (confdir / "memory-routing-cookies.json").write_text("{not json")
    proxy = start_proxy(tmp_path, config)
    try:
        assert proxy.wait_for_log("is not a usable cookie jar")
        assert chat(proxy, "b").status_code == 200
    finally:
        proxy.stop()
    assert list(confdir.glob("memory-routing-cookies.json.corrupt-*"))
