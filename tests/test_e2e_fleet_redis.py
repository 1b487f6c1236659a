"""End-to-end: cookies and the per-host in-flight cap shared by several mitmdump processes
through one real Redis (storage.redis_url), and what they do while Redis is down."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from fake_upstream import FakeUpstream
from fleet_servers import RedisServer
from harness import RunningProxy, start_proxy, wait_until

pytestmark = pytest.mark.e2e

WAIT = 60
LEASE_SECONDS = 3
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def write_config(path: Path, fake: FakeUpstream, redis_url: str, name: str) -> Path:
    path.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "m", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1", "api_key": "sk-fleet"}}],
        "storage": {"redis_url": redis_url, "proxy_name": name, "lease_seconds": LEASE_SECONDS},
    }))
    return path


@contextlib.contextmanager
def fleet(tmp_path: Path, fake: FakeUpstream, redis_url: str, names: str = "abc",
          extra_args: tuple[str, ...] = ()) -> Iterator[list[RunningProxy]]:
    """One mitmdump per name, each with its own directory (confdir, cookie file, store)."""
    proxies: list[RunningProxy] = []
    try:
        for name in names:
            workdir = tmp_path / name
            workdir.mkdir()
            config = write_config(workdir / "config.yaml", fake, redis_url, name)
            proxies.append(start_proxy(workdir, config, extra_args=extra_args))
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()


def chat(proxy: RunningProxy, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(timeout=WAIT) as client:
        return client.post(f"{proxy.gateway_url}/v1/chat/completions", json={"model": "m", **CHAT},
                           headers=headers or {})


def info(proxy: RunningProxy) -> dict:
    return httpx.get(f"{proxy.gateway_url}/memory-routing/info", timeout=WAIT).json()


def health(proxy: RunningProxy) -> dict:
    return httpx.get(f"{proxy.gateway_url}/health", timeout=WAIT).json()


def queued(proxy: RunningProxy) -> int:
    return sum(host["queued"] for host in info(proxy)["upstreams"]["in_flight"].values())


def fleet_figures(proxy: RunningProxy) -> list[dict]:
    return [host.get("fleet") for host in info(proxy)["upstreams"]["in_flight"].values()]


@pytest.fixture
def held_fake() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(hold_requests=True).start()
    yield fake
    fake.release()
    fake.stop()


def test_a_cap_of_3_holds_across_three_proxies(tmp_path: Path, redis_url: str, held_fake: FakeUpstream):
    with fleet(tmp_path, held_fake, redis_url, extra_args=("--set", "memory_routing_max_in_flight=3")) as proxies:
        with ThreadPoolExecutor(max_workers=24) as pool:
            calls = [pool.submit(chat, proxies[i % 3]) for i in range(24)]
            try:
                assert wait_until(lambda: held_fake.in_flight == 3 and sum(map(queued, proxies)) == 21, timeout=WAIT)
                # Every proxy's figures come from the fleet's counts (the waiters ask again and again).
                assert wait_until(lambda: all(f == [{"in_flight": 3, "waiting": 21}] for f in map(fleet_figures, proxies)),
                                  timeout=WAIT)
                assert held_fake.max_in_flight == 3
            finally:
                held_fake.release()
            statuses = [call.result(WAIT).status_code for call in calls]
    assert statuses == [200] * 24
    assert held_fake.max_in_flight == 3


def test_a_killed_proxys_slots_come_back_within_the_lease(tmp_path: Path, redis_url: str, held_fake: FakeUpstream):
    with fleet(tmp_path, held_fake, redis_url, extra_args=("--set", "memory_routing_max_in_flight=3")) as proxies:
        a, b, c = proxies
        with ThreadPoolExecutor(max_workers=8) as pool:
            through_b = [pool.submit(chat, b) for _ in range(3)]
            assert wait_until(lambda: held_fake.in_flight == 3, timeout=WAIT)  # B holds every slot
            others: list[Future[httpx.Response]] = [pool.submit(chat, proxy) for proxy in (a, c, a, c)]
            assert wait_until(lambda: queued(a) == 2 and queued(c) == 2, timeout=WAIT)
            b.process.send_signal(signal.SIGKILL)
            b.process.wait(WAIT)
            # B's three requests stay held at the upstream; its leases run out, and three of the
            # four waiting through A and C reach it (bounded by a few lease times, not timed).
            assert wait_until(lambda: len(held_fake.requests) == 6, timeout=10 * LEASE_SECONDS)
            assert queued(a) + queued(c) == 1
            held_fake.release()
            statuses = [call.result(WAIT).status_code for call in others]
            for call in through_b:
                with contextlib.suppress(httpx.HTTPError):
                    call.result(WAIT)
    assert statuses == [200] * 4


def test_redis_down_falls_back_to_the_local_cap_and_recovers(tmp_path: Path, redis_server: RedisServer,
                                                             redis_url: str, held_fake: FakeUpstream):
    with fleet(tmp_path, held_fake, redis_url, names="ab",
               extra_args=("--set", "memory_routing_max_in_flight=2")) as (a, b):
        held_fake.hold_requests = False
        assert chat(a).status_code == 200 and chat(b).status_code == 200
        assert health(a)["status"] == "healthy"
        redis_server.stop()
        try:
            held_fake.hold_requests = True
            with ThreadPoolExecutor(max_workers=6) as pool:
                calls = [pool.submit(chat, proxy) for proxy in (a, a, a, b, b, b)]
                # Each proxy counts its own calls now: two in flight each, one queued each.
                assert wait_until(lambda: held_fake.in_flight == 4 and queued(a) == 1 and queued(b) == 1, timeout=WAIT)
                degraded = health(a)
                held_fake.release()
                statuses = [call.result(WAIT).status_code for call in calls]
        finally:
            redis_server.start()
        assert statuses == [200] * 6
        assert degraded["status"] == "degraded" and set(degraded["degraded"]) == {"redis"}
        assert a.log().count("fleet: redis unavailable") == 1  # one warning per outage
        assert wait_until(lambda: health(a)["status"] == "healthy" and health(b)["status"] == "healthy", timeout=WAIT)
        held_fake.reset()
        held_fake.hold_requests = True
        with ThreadPoolExecutor(max_workers=6) as pool:
            calls = [pool.submit(chat, proxy) for proxy in (a, a, a, b, b, b)]
            # The fleet's cap again: two in flight across both proxies, four waiting.
            assert wait_until(lambda: held_fake.in_flight == 2 and queued(a) + queued(b) == 4, timeout=WAIT)
            held_fake.release()
            assert [call.result(WAIT).status_code for call in calls] == [200] * 6
        assert held_fake.max_in_flight == 2


def test_a_cloudflare_cookie_set_through_one_proxy_is_sent_by_the_others(tmp_path: Path, redis_url: str):
    fake = FakeUpstream(cloudflare=True).start()  # refuses (error 1200) a request without its cookie
    try:
        with fleet(tmp_path, fake, redis_url) as (a, b, c):
            assert chat(a).status_code == 200  # the first caller gets the cookie
            assert fake.cf_token is not None
            for proxy in (b, c):
                # Learned in the background (the hook never waits on Redis): bounded wait, then use.
                assert wait_until(lambda proxy=proxy: [cookie["name"] for cookie in info(proxy)["upstreams"]["cookies"]]
                                  == ["__cf_bm"], timeout=WAIT)
                assert chat(proxy).status_code == 200
                assert fake.requests[-1].headers.get("cookie") == f"__cf_bm={fake.cf_token}"
            assert fake.cf_token not in a.log() + b.log() + c.log()
    finally:
        fake.stop()


def test_redis_down_the_jars_go_on_alone_and_catch_up(tmp_path: Path, redis_server: RedisServer, redis_url: str):
    fake = FakeUpstream().start()
    try:
        with fleet(tmp_path, fake, redis_url, names="ab") as (a, b):
            redis_server.stop()
            try:
                set_cookie = {"x-fake-set-cookie": "__cf_bm=set-while-redis-was-down; Path=/"}
                assert chat(a, headers=set_cookie).status_code == 200
                assert chat(a).status_code == 200
                assert fake.requests[-1].headers.get("cookie") == "__cf_bm=set-while-redis-was-down"  # A's own jar
                assert wait_until(lambda: health(a)["status"] == "degraded", timeout=WAIT)
            finally:
                redis_server.start()
            # Written once Redis is back, and B reads it: announced, or B's resync after the outage.
            assert wait_until(lambda: [c["name"] for c in info(b)["upstreams"]["cookies"]] == ["__cf_bm"], timeout=WAIT)
            assert chat(b).status_code == 200
            assert fake.requests[-1].headers.get("cookie") == "__cf_bm=set-while-redis-was-down"
            assert wait_until(lambda: health(a)["status"] == "healthy", timeout=WAIT)
            assert a.log().count("fleet: redis unavailable") == 1
    finally:
        fake.stop()


def test_the_fleets_queue_timeout_answers_503_with_retry_after(tmp_path: Path, redis_url: str,
                                                               held_fake: FakeUpstream):
    args = ("--set", "memory_routing_max_in_flight=1", "--set", "memory_routing_queue_timeout=1")
    with fleet(tmp_path, held_fake, redis_url, names="ab", extra_args=args) as (a, b):
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(chat, a)
            assert wait_until(lambda: held_fake.in_flight == 1, timeout=WAIT)  # A holds the fleet's one slot
            try:
                refused = chat(b)
            finally:
                held_fake.release()
            assert first.result(WAIT).status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "in flight (the fleet's cap) and this one waited 1 s for a slot" in refused.json()["error"]["message"]
    assert len(held_fake.requests) == 1
