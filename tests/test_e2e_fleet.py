"""End-to-end: three proxies A, B and C share one PostgreSQL and one Redis, and behave as one proxy.

Real `mitmdump -s addon.py` processes (tests/fleet_harness.py), each with its own HOME and
confdir, in front of the fake upstreams, driven by real clients (the openai and anthropic SDKs,
httpx). The servers are real too (tests/fleet_servers.py): the last tests kill a proxy, and stop
and start the servers under the running proxies.

The module's fleet has a cap of 3 calls in flight per upstream host and a short lease, so that a
killed proxy's slots come back within seconds. Each upstream host has a job: 127.0.0.1 answers
the memory and usage calls, 127.0.0.2 is behind "Cloudflare", 127.0.0.3 holds every call until
the test releases it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest

from fake_upstream import FakeUpstream
from fleet_harness import Fleet, fleet_config, health, info, running_fleet, server_down
from fleet_servers import PostgresServer, RedisServer
from harness import RunningProxy, wait_until
from memory_routing.memory.redact import FENCE_OPEN
from memory_routing.wire.flow_log import PREFIX as FLOW_LOG_PREFIX

pytestmark = pytest.mark.e2e

NAMES = ("A", "B", "C")
WAIT = 30.0
CAP = 3
LEASE_SECONDS = 3
KEYS = {"MR_FLEET_OPENAI_KEY": "sk-fleet-openai-2201", "MR_FLEET_ANTHROPIC_KEY": "sk-ant-fleet-2202"}


def model_list(fake: FakeUpstream, cloudflare: FakeUpstream, held: FakeUpstream) -> list[dict]:
    openai_key, anthropic_key = "os.environ/MR_FLEET_OPENAI_KEY", "os.environ/MR_FLEET_ANTHROPIC_KEY"
    return [
        {"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o", "api_base": f"{fake.url}/v1",
                                                    "api_key": openai_key}},
        {"model_name": "claude-sonnet-4-5", "litellm_params": {"model": "anthropic/claude-sonnet-4-5",
                                                               "api_base": fake.url, "api_key": anthropic_key}},
        {"model_name": "behind-cloudflare", "litellm_params": {"model": "openai/gpt-4o-mini",
                                                               "api_base": f"{cloudflare.url}/v1", "api_key": openai_key}},
        {"model_name": "held", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": f"{held.url}/v1",
                                                  "api_key": openai_key}},
    ]


@pytest.fixture(scope="module")
def cloudflare() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(host="127.0.0.2", cloudflare=True).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def held() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(host="127.0.0.3").start()
    yield fake
    fake.release()
    fake.stop()


@pytest.fixture(scope="module")
def fleet(fake: FakeUpstream, cloudflare: FakeUpstream, held: FakeUpstream, tmp_path_factory: pytest.TempPathFactory,
          postgres_server: PostgresServer, redis_server: RedisServer) -> Iterator[Fleet]:
    # One database and one Redis for the module's proxies (the database_url and redis_url
    # fixtures are per test).
    for server in (postgres_server, redis_server):
        if server.process is None:
            server.start()
    redis_server.flush()
    config = fleet_config(model_list(fake, cloudflare, held), lease_seconds=LEASE_SECONDS,
                          user_id_mappings={"default_user_id": "fleet-dev"})
    with running_fleet(tmp_path_factory.mktemp("fleet"), NAMES, config, database_url=postgres_server.create_database(),
                       redis_url=redis_server.url(), env=KEYS,
                       extra_args=("--set", f"memory_routing_max_in_flight={CAP}")) as running:
        yield running


@pytest.fixture
def held_calls(held: FakeUpstream) -> Iterator[FakeUpstream]:
    """The holding upstream, emptied, holding every call until the test releases them."""
    held.reset()
    held.hold_requests = True
    yield held
    held.release()


def openai_client(proxy: RunningProxy, user: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-client-unused", max_retries=0, timeout=WAIT,
                         default_headers={"x-memory-user-id": user, **headers})


def anthropic_client(proxy: RunningProxy, user: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-client-unused", max_retries=0,
                               timeout=WAIT, default_headers={"x-memory-user-id": user, **headers})


def tell(proxy: RunningProxy, user: str, text: str, conversation: str) -> str:
    answer = openai_client(proxy, user).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}],
        extra_headers={"x-memory-conversation-id": conversation})
    return answer.choices[0].message.content or ""


def ask_claude(proxy: RunningProxy, user: str, text: str, conversation: str, mode: str = "both") -> str:
    answer = anthropic_client(proxy, user).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": text}],
        extra_headers={"x-memory-conversation-id": conversation, "x-memory-mode": mode})
    return "".join(block.text for block in answer.content if block.type == "text")


def memories(proxy: RunningProxy, user: str) -> list[str]:
    answer = httpx.get(f"{proxy.gateway_url}/memory-routing/memories", params={"user_id": user}, timeout=WAIT)
    return [row["text"] for row in answer.json()["data"]] if answer.status_code == 200 else []


def remembered(proxy: RunningProxy, user: str, *facts: str) -> bool:
    texts = "\n".join(memories(proxy, user))
    return all(fact in texts for fact in facts)


def last_user_text(upstream: FakeUpstream) -> str:
    content = upstream.last().json["messages"][-1]["content"]
    return content if isinstance(content, str) else "\n".join(block.get("text", "") for block in content)


def calls_by_proxy(proxy: RunningProxy, since: float) -> dict[str, int] | None:
    answer = httpx.get(f"{proxy.gateway_url}/memory-routing/usage", params={"group_by": "proxy", "since": since},
                       timeout=WAIT)
    return {row["key"]: row["calls"] for row in answer.json()["data"]} if answer.status_code == 200 else None


def queued(proxy: RunningProxy) -> int:
    return sum(host["queued"] for host in info(proxy)["upstreams"]["in_flight"].values())


def held_call(proxy: RunningProxy) -> str:
    answer = openai_client(proxy, "cap-user", **{"x-memory-mode": "off"}).chat.completions.create(
        model="held", messages=[{"role": "user", "content": "hold me"}])
    return answer.choices[0].message.content or ""


def test_the_proxies_start_together_on_one_migrated_database(fleet: Fleet):
    for name in NAMES:
        status = info(fleet[name])["fleet"]
        assert status["proxy"] == name
        assert status["database"]["ready"] is True and status["database"]["migration_error"] is None
        assert status["degraded"] == {}
        assert health(fleet[name])["status"] == "healthy"
    logs = "".join(fleet[name].log() for name in NAMES)
    assert logs.count("fleet database: applied migrations") == 1  # one proxy migrated, under the lock
    for secret in KEYS.values():
        assert secret not in logs


def test_a_fact_told_through_a_is_injected_through_c_in_a_new_conversation(fleet: Fleet, upstream: FakeUpstream):
    assert tell(fleet["A"], "fleet-alice", "My cat is called Tiberius and she sleeps on the piano", "alice-1")
    # Written by A's writer thread after the answer: C reads the fleet's memory, not A's file.
    assert wait_until(lambda: remembered(fleet["C"], "fleet-alice", "Tiberius"), WAIT), memories(fleet["C"], "fleet-alice")
    # C learns that alice has memories at all within its presence refresh (5 s): until then a new
    # conversation gets no block. Asked again in new conversations (read mode: nothing stored)
    # until one does, bounded.
    asked = iter(range(1000))

    def injected_through_c() -> bool:
        upstream.reset()
        ask_claude(fleet["C"], "fleet-alice", "What is my cat called?", f"alice-{next(asked) + 2}", mode="read")
        return FENCE_OPEN in last_user_text(upstream)

    assert wait_until(injected_through_c, WAIT)
    text = last_user_text(upstream)
    assert text.startswith(FENCE_OPEN) and "Tiberius and she sleeps on the piano" in text
    assert text.endswith("What is my cat called?")
    # Another user asking through B gets nothing of alice's.
    upstream.reset()
    assert tell(fleet["B"], "fleet-bob", "What is my cat called?", "bob-1")
    assert "Tiberius" not in upstream.last().body.decode()


def test_bs_usage_api_and_dashboard_show_the_calls_made_through_a_and_c(fleet: Fleet, upstream: FakeUpstream):
    since = time.time()  # this test's calls only (the rows carry their arrival time)
    for n in range(2):
        tell(fleet["A"], "fleet-usage", f"usage through A, {n}", "usage-a")
    with anthropic_client(fleet["C"], "fleet-usage").messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "usage through C"}]) as stream:
        assert stream.get_final_message().content
    expected = {"A": 2, "C": 1}
    assert wait_until(lambda: calls_by_proxy(fleet["B"], since) == expected, WAIT), calls_by_proxy(fleet["B"], since)
    recent = httpx.get(f"{fleet['B'].gateway_url}/memory-routing/usage/recent", params={"proxy": "C"}, timeout=WAIT)
    assert {row["proxy"] for row in recent.json()["data"]} == {"C"}
    assert [row["alias"] for row in recent.json()["data"] if row["user_id"] == "fleet-usage"] == ["claude-sonnet-4-5"]
    page = httpx.get(f"{fleet['B'].gateway_url}/memory-routing/", timeout=WAIT)
    assert page.status_code == 200
    assert '<td class="proxy">A</td>' in page.text and '<td class="proxy">C</td>' in page.text


def test_a_cloudflare_cookie_set_through_a_is_sent_by_c(fleet: Fleet, cloudflare: FakeUpstream):
    cloudflare.reset()
    client_a = openai_client(fleet["A"], "fleet-cf", **{"x-memory-mode": "off"})
    assert client_a.chat.completions.create(model="behind-cloudflare", messages=[{"role": "user", "content": "hi"}])
    assert cloudflare.cf_token is not None  # the first call is admitted and handed __cf_bm
    cookie = f"__cf_bm={cloudflare.cf_token}"

    def c_holds_it() -> bool:
        return any(entry["name"] == "__cf_bm" and entry["domain"] == "127.0.0.2"
                   for entry in info(fleet["C"])["upstreams"]["cookies"])

    # C learns of it from Redis in the background (a hook never waits on the network for it).
    assert wait_until(c_holds_it, WAIT), info(fleet["C"])["upstreams"]["cookies"]
    client_c = openai_client(fleet["C"], "fleet-cf", **{"x-memory-mode": "off"})
    # Without the cookie, the fake Cloudflare answers error 1200 (a 429 to the client).
    assert client_c.chat.completions.create(model="behind-cloudflare", messages=[{"role": "user", "content": "hi"}])
    assert cloudflare.requests[-1].headers.get("cookie") == cookie
    for name in NAMES:
        assert cloudflare.cf_token not in fleet[name].log()
        assert cloudflare.cf_token not in json.dumps(info(fleet[name]))


def test_a_cap_of_3_holds_across_three_proxies_under_24_concurrent_calls(fleet: Fleet, held_calls: FakeUpstream):
    proxies = [fleet[name] for name in NAMES]
    with ThreadPoolExecutor(max_workers=24) as pool:
        calls = [pool.submit(held_call, proxies[i % 3]) for i in range(24)]
        try:
            assert wait_until(lambda: held_calls.in_flight == CAP and sum(map(queued, proxies)) == 24 - CAP, WAIT)
            assert held_calls.max_in_flight == CAP
        finally:
            held_calls.release()
        answers = [call.result(WAIT) for call in calls]
    assert answers == ["Hello from OpenAI"] * 24
    assert len(held_calls.requests) == 24 and held_calls.max_in_flight == CAP


def test_b_killed_holding_every_slot_gives_them_back_within_the_lease(fleet: Fleet, held_calls: FakeUpstream):
    a, b, c = (fleet[name] for name in NAMES)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            through_b = [pool.submit(held_call, b) for _ in range(CAP)]
            assert wait_until(lambda: held_calls.in_flight == CAP, WAIT)  # B holds every slot
            waiting = [pool.submit(held_call, proxy) for proxy in (a, c, a, c)]
            assert wait_until(lambda: queued(a) == 2 and queued(c) == 2, WAIT)
            fleet.sigkill("B")
            # B's three calls stay open at the upstream, but nobody renews their leases: within
            # the lease time three of the four waiting through A and C reach the host (bounded
            # by several lease times, not timed).
            assert wait_until(lambda: len(held_calls.requests) == 2 * CAP, 10 * LEASE_SECONDS)
            assert queued(a) + queued(c) == 1
            held_calls.release()
            answers = [call.result(WAIT) for call in waiting]
            for call in through_b:
                with pytest.raises(openai.APIConnectionError):
                    call.result(WAIT)
        assert answers == ["Hello from OpenAI"] * 4
    finally:
        held_calls.release()
        fleet.start(["B"])  # the module's later tests use all three
        fleet.wait_database_ready()


def flow_log(proxy: RunningProxy) -> list[dict]:
    return [json.loads(line.split(FLOW_LOG_PREFIX, 1)[1]) for line in proxy.log().splitlines() if FLOW_LOG_PREFIX in line]


def test_postgres_then_redis_stopped_mid_run_every_call_answered_and_what_was_written_recalled(
        fleet: Fleet, upstream: FakeUpstream, cloudflare: FakeUpstream,
        postgres_server: PostgresServer, redis_server: RedisServer):
    a, b, c = (fleet[name] for name in NAMES)
    since = time.time()  # this test's calls only (the rows carry their arrival time)
    assert tell(a, "fleet-carol", "Before the outage: my bike is a green Brompton", "carol-1")
    assert wait_until(lambda: remembered(b, "fleet-carol", "green Brompton"), WAIT)
    with server_down(postgres_server):
        assert tell(b, "fleet-carol", "During the database outage: my locker number is 4471", "carol-2") == "Hello from OpenAI"
        assert ask_claude(c, "fleet-carol", "What bike do I ride?", "carol-3") == "Hello from Claude"
        assert wait_until(lambda: health(b)["status"] == "degraded" and "database" in health(b)["degraded"], WAIT)
        with server_down(redis_server):
            assert tell(c, "fleet-carol", "During both outages: my train leaves at 7:42", "carol-4") == "Hello from OpenAI"
            openai_client(a, "fleet-cf", **{"x-memory-mode": "off"}).chat.completions.create(
                model="behind-cloudflare", messages=[{"role": "user", "content": "hi"}])  # the local jar and cap
            assert wait_until(lambda: set(health(c)["degraded"]) == {"database", "redis"}, WAIT), health(c)
    # Both are back: the proxies find out by themselves, and write what waited.
    for proxy in (a, b, c):
        assert wait_until(lambda proxy=proxy: health(proxy)["status"] == "healthy", 3 * WAIT), health(proxy)
    facts = ("green Brompton", "locker number is 4471", "train leaves at 7:42")
    assert wait_until(lambda: remembered(a, "fleet-carol", *facts), 3 * WAIT), memories(a, "fleet-carol")
    upstream.reset()
    assert tell(a, "fleet-carol", "What is my locker number and when does my train leave?", "carol-5")
    text = last_user_text(upstream)
    assert text.startswith(FENCE_OPEN) and "4471" in text and "7:42" in text
    # Every call of the outage has its usage row, written when the database came back.
    assert wait_until(lambda: sum((calls_by_proxy(a, since) or {}).values()) == 6, WAIT), calls_by_proxy(a, since)
    recall_during = [line["memory"].get("recall") for proxy in (b, c) for line in flow_log(proxy)
                     if line.get("user_id") == "fleet-carol" and isinstance(line.get("memory"), dict)]
    assert "unavailable" in recall_during, recall_during
    for name in NAMES:
        log = fleet[name].log()
        assert log.count("fleet: database unavailable") <= 1 and log.count("fleet: redis unavailable") <= 1
        assert "Traceback" not in log
