"""The fleet's in-flight cap against a real Redis: the lease script (grants up to the cap, expiry
of a dead holder's slot and of a dead waiter's place, renewal, release, arrival order, Redis's
clock) and FleetCap (waking waiters, the outage reported once, recovery)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from fleet_servers import RedisServer
from memory_routing.fleet.health import REDIS, FleetHealth
from memory_routing.fleet.leases import FREED_CHANNEL, FleetCap, FleetCount, FleetLeases, lease_keys
from memory_routing.fleet.redis_client import open_client

HOST = "api.example:443"
BOUND_S = 10.0  # every wait below is bounded by this

T = TypeVar("T")


def run(test: Callable[[redis.asyncio.Redis], Coroutine[Any, Any, T]], url: str) -> T:
    async def with_client() -> T:
        client = open_client(url)
        try:
            return await test(client)
        finally:
            await client.aclose()
    return asyncio.run(with_client())


async def eventually(ask: Callable[[], Awaitable[FleetCount]]) -> FleetCount:
    """Ask until granted, bounded (the test fails if it never is)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while loop.time() < deadline:
        count = await ask()
        if count.granted:
            return count
        await asyncio.sleep(0.05)
    raise AssertionError("never granted")


def test_grants_up_to_the_cap_and_queues_the_rest(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> list[FleetCount]:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=30)
        return [await leases.acquire(HOST, f"t{i}", 3) for i in range(5)]

    counts = run(test, redis_url)
    assert [c.granted for c in counts] == [True, True, True, False, False]
    assert (counts[-1].in_flight, counts[-1].waiting) == (3, 2)


def test_a_dead_holders_slot_is_free_after_its_lease(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[FleetCount, FleetCount]:
        leases = FleetLeases(client, lease_seconds=0.3, ticket_seconds=30)
        held = await leases.acquire(HOST, "dead-holder", 1)  # and never renewed
        waiter = await eventually(lambda: leases.acquire(HOST, "waiter", 1))
        return held, waiter

    held, waiter = run(test, redis_url)
    assert held.granted
    assert waiter.granted and waiter.in_flight == 1
    assert waiter.redis_ms >= held.redis_ms + 300  # not before the lease ran out, on Redis's clock


def test_renewal_keeps_the_slot(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[list[bool], float, float]:
        leases = FleetLeases(client, lease_seconds=1, ticket_seconds=30)
        first = await leases.acquire(HOST, "holder", 1)
        before = await client.zscore(lease_keys(HOST)[0], "holder")
        asked = []
        renewed = first
        # Past twice the lease, renewed every 0.1 s: the waiter never gets the slot.
        while renewed.redis_ms < first.redis_ms + 2000:
            renewed = await leases.renew(HOST, ["holder"])
            asked.append((await leases.acquire(HOST, "waiter", 1)).granted)
            await asyncio.sleep(0.1)
        after = await client.zscore(lease_keys(HOST)[0], "holder")
        assert before is not None and after is not None
        return asked, before, after

    asked, before, after = run(test, redis_url)
    assert asked and not any(asked)
    assert after >= before + 2000 - 1000  # the expiry moved with the renewals


def test_renewal_does_not_bring_back_a_released_lease(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> FleetCount:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=30)
        await leases.acquire(HOST, "holder", 1)
        await leases.release(HOST, ["holder"])
        return await leases.renew(HOST, ["holder"])  # a renewal that crossed the release

    assert run(test, redis_url).in_flight == 0


def test_release_frees_the_slot_and_announces_it(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[FleetCount, FleetCount, object]:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=30)
        async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(FREED_CHANNEL)
            await leases.acquire(HOST, "holder", 1)
            refused = await leases.acquire(HOST, "waiter", 1)
            await leases.release(HOST, ["holder"])
            message = None
            for _ in range(5):  # the subscription's confirmation is read first, as None
                message = message or await pubsub.get_message(timeout=BOUND_S)
        return refused, await leases.acquire(HOST, "waiter", 1), message

    refused, granted, message = run(test, redis_url)
    assert not refused.granted and granted.granted
    assert isinstance(message, dict) and message["data"] == HOST.encode()


def test_waiters_are_granted_in_arrival_order(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> list[tuple[str, bool]]:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=30)
        await leases.acquire(HOST, "holder", 1)
        for waiter in ("first", "second", "third"):
            assert not (await leases.acquire(HOST, waiter, 1)).granted
        await leases.release(HOST, ["holder"])
        # The later ones ask first: only the oldest gets the free slot.
        return [(w, (await leases.acquire(HOST, w, 1)).granted) for w in ("third", "second", "first")]

    assert run(test, redis_url) == [("third", False), ("second", False), ("first", True)]


def test_a_dead_waiters_place_expires(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> FleetCount:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=0.3)
        await leases.acquire(HOST, "holder", 1)
        await leases.acquire(HOST, "dead-waiter", 1)  # asks once, then its proxy is gone
        await leases.acquire(HOST, "live-waiter", 1)
        await leases.release(HOST, ["holder"])
        return await eventually(lambda: leases.acquire(HOST, "live-waiter", 1))

    granted = run(test, redis_url)
    assert (granted.in_flight, granted.waiting) == (1, 0)


def test_the_script_reads_redis_clock(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[int, FleetCount, int, float]:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=30)
        seconds, micros = await client.time()
        count = await leases.acquire(HOST, "holder", 1)
        seconds_after, micros_after = await client.time()
        score = await client.zscore(lease_keys(HOST)[0], "holder")
        assert score is not None
        return seconds * 1000 + micros // 1000, count, seconds_after * 1000 + micros_after // 1000, score

    before, count, after, score = run(test, redis_url)
    assert before <= count.redis_ms <= after
    assert score == count.redis_ms + 30_000  # the lease's expiry: Redis's now plus the lease time


def test_fleet_cap_wakes_a_waiter_when_another_proxy_releases(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[bool, bool]:
        health = FleetHealth()
        # Two proxies' sides of the cap, each with its own connection, as in two processes.
        a = FleetCap(redis_url, health, lease_seconds=30, proxy_name="a")
        b = FleetCap(redis_url, health, lease_seconds=30, proxy_name="b")
        a.start()
        b.start()
        try:
            held = await a.take(HOST, 1, timeout=BOUND_S)
            assert held is not None
            waiter = asyncio.ensure_future(b.take(HOST, 1, timeout=BOUND_S))
            while b.waiting[HOST] == 0:
                await asyncio.sleep(0.01)
            assert not waiter.done()
            held.release()
            slot = await asyncio.wait_for(waiter, BOUND_S)
            assert slot is not None
            timed_out = await b.take(HOST, 1, timeout=0.2)  # the one slot is b's now
            return slot.ticket in b.held[HOST], timed_out is None
        finally:
            await a.close()
            await b.close()

    assert run(test, redis_url) == (True, True)


def test_fleet_cap_reports_an_outage_once_and_recovers(redis_server: RedisServer, redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[list[bool], int, bool]:
        health = FleetHealth()
        cap = FleetCap(redis_url, health, lease_seconds=30, proxy_name="a")
        try:
            held = await cap.take(HOST, 2, timeout=BOUND_S)
            assert held is not None and health.status() == {}
            redis_server.stop()
            usable = [cap.usable]
            for _ in range(3):
                with pytest.raises(redis.RedisError):
                    await cap.take(HOST, 2, timeout=BOUND_S)
            usable.append(cap.usable)
            seen = health.outages_seen[REDIS]
            redis_server.start()
            await cap.renew_now()  # the renewal tick: the probe that notices Redis is back
            usable.append(cap.usable)
            return usable, seen, (await cap.take(HOST, 2, timeout=BOUND_S)) is not None
        finally:
            await cap.close()

    usable, outages, taken_after = run(test, redis_url)
    assert usable == [True, False, True]
    assert outages == 1
    assert taken_after


def test_fleet_cap_renews_a_held_slot_past_its_lease(redis_url: str) -> None:
    # A long call (a streaming answer): its proxy's renewal tick keeps the slot well past the
    # lease time, on Redis's clock; another proxy never gets it meanwhile.
    async def test(client: redis.asyncio.Redis) -> list[bool]:
        holder = FleetCap(redis_url, FleetHealth(), lease_seconds=2, proxy_name="holder")
        other = FleetCap(redis_url, FleetHealth(), lease_seconds=2, proxy_name="other")
        holder.start()
        try:
            held = await holder.take(HOST, 1, timeout=BOUND_S)
            assert held is not None
            since = holder.counts[HOST].redis_ms
            refused = []
            for _ in range(100):  # bounded; ends on Redis's clock, three lease times later
                refused.append(await other.take(HOST, 1, timeout=0.2) is None)
                if other.counts[HOST].redis_ms > since + 3 * 2000:
                    break
            else:
                raise AssertionError("Redis's clock did not pass three lease times")
            held.release()
            assert await other.take(HOST, 1, timeout=BOUND_S) is not None  # given back: the other's turn
            return refused
        finally:
            await holder.close()
            await other.close()

    refused = run(test, redis_url)
    assert refused and all(refused)


def test_a_stopping_proxy_gives_its_slots_back_at_once(redis_url: str) -> None:
    # mitmproxy's done(), synchronous: the leases go now, not a lease time (30 s here) later.
    async def test(client: redis.asyncio.Redis) -> tuple[int, int]:
        cap = FleetCap(redis_url, FleetHealth(), lease_seconds=30, proxy_name="stopping")
        try:
            for _ in range(2):
                assert await cap.take(HOST, 2, timeout=BOUND_S) is not None
            before = await client.zcard(lease_keys(HOST)[0])
            cap.give_back_all()
            return before, await client.zcard(lease_keys(HOST)[0])
        finally:
            await cap.close()

    assert run(test, redis_url) == (2, 0)


def test_a_waiter_giving_up_announces_for_those_behind_it(redis_url: str) -> None:
    async def test(client: redis.asyncio.Redis) -> tuple[bool, list[object]]:
        leases = FleetLeases(client, lease_seconds=30, ticket_seconds=30)
        async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(FREED_CHANNEL)
            await leases.acquire(HOST, "holder", 1)
            await leases.acquire(HOST, "first", 1)
            await leases.acquire(HOST, "second", 1)
            await leases.release(HOST, ["holder"])
            blocked = (await leases.acquire(HOST, "second", 1)).granted  # "first" is ahead of it
            await leases.release(HOST, ["first"])  # gives up (its queue timeout, its client gone)
            messages: list[object] = []
            for _ in range(6):  # the subscription's confirmation is read first, as None
                if len(messages) < 2 and (message := await pubsub.get_message(timeout=BOUND_S)) is not None:
                    messages.append(message["data"])
        return blocked, messages

    assert run(test, redis_url) == (False, [HOST.encode(), HOST.encode()])
