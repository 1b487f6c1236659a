"""Cookie jars shared through a real Redis (fleet.shared_cookies): two proxies' jars, each the
in-process jar of upstream.cookie_jar, learn each other's cookies; RFC 6265's rules and the
one-host-per-cookie rule still hold; Redis down, each jar goes on alone and catches up after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from fleet_servers import RedisServer
from memory_routing.fleet.health import REDIS, FleetHealth
from memory_routing.fleet.shared_cookies import SharedCookies, jar_diff, scope_key
from memory_routing.upstream.cookie_jar import MACHINE_SCOPE, Entry, UpstreamCookieJar

API = "https://api.example.com/v1/chat/completions"
OTHER_HOST = "https://api.other.example/v1/chat/completions"
BOUND_S = 10.0


class Proxy:
    """What one proxy has: its jar, and its side of the shared jars (as the addon wires them)."""

    def __init__(self, url: str, health: FleetHealth | None = None, jar: UpstreamCookieJar | None = None) -> None:
        self.jar = jar or UpstreamCookieJar()
        self.health = health or FleetHealth()
        self.fleet = SharedCookies(url, self.health, apply=self.apply, local=self.jar.scope_entries,
                                   scopes=self.jar.resident_scopes)

    def apply(self, scope: str, entries: list[Entry]) -> bool:
        if not self.jar.resident(scope):
            return False
        self.jar.replace_scope(scope, entries)
        return True

    def upstream_set(self, *set_cookies: str, url: str = API, scope: str = MACHINE_SCOPE) -> None:
        before = self.jar.scope_entries(scope)
        if self.jar.store(url, scope, list(set_cookies)):
            self.fleet.changed(jar_diff(scope, before, self.jar.scope_entries(scope)))

    def sent(self, url: str = API, scope: str = MACHINE_SCOPE) -> str | None:
        """The jar's Cookie header for ``url``, its cookies sorted (their order is the hash's)."""
        header = self.jar.cookie_header(url, scope, None)
        return "; ".join(sorted(header.split("; "))) if header else None


async def until(predicate: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not predicate():
        assert loop.time() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


def with_proxies(url: str, test: Callable[[Proxy, Proxy], Awaitable[None]], **kwargs: Any) -> None:
    async def run() -> None:
        a, b = Proxy(url, **kwargs), Proxy(url, **kwargs)
        a.fleet.start()
        b.fleet.start()
        try:
            await asyncio.sleep(0)
            await test(a, b)
        finally:
            await a.fleet.close()
            await b.fleet.close()
    asyncio.run(run())


async def subscribed(*proxies: Proxy) -> None:
    # Announcements reach only subscribers: wait (bounded) until both listeners are in.
    client = proxies[0].fleet.client
    await until_async(lambda: client.pubsub_numsub("memory-routing:cookies:changed"), len(proxies))


async def until_async(ask: Callable[[], Coroutine[Any, Any, list[tuple[bytes, int]]]], count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while (await ask())[0][1] < count:
        assert loop.time() < deadline, "listeners never subscribed"
        await asyncio.sleep(0.02)


def test_a_cookie_set_through_one_proxy_is_sent_by_the_other(redis_url: str) -> None:
    async def test(a: Proxy, b: Proxy) -> None:
        await subscribed(a, b)
        a.upstream_set("__cf_bm=from-a; Path=/; Max-Age=1800", "session=never-kept; Path=/")
        await until(lambda: b.sent() == "__cf_bm=from-a")
        assert b.sent(OTHER_HOST) is None  # a cookie of one host never reaches another
        assert b.sent("http://api.example.com/v1/x") == "__cf_bm=from-a"  # not Secure: http too
        # B's upstream replaces it: A follows.
        b.upstream_set("__cf_bm=from-b; Path=/; Max-Age=1800")
        await until(lambda: a.sent() == "__cf_bm=from-b")

    with_proxies(redis_url, test)


def test_expiry_and_deletion_follow_rfc_6265_across_the_fleet(redis_url: str) -> None:
    async def test(a: Proxy, b: Proxy) -> None:
        await subscribed(a, b)
        a.upstream_set("__cf_bm=keep; Path=/", "cf_clearance=secure-only; Path=/; Secure", "_cfuvid=gone-soon; Path=/")
        await until(lambda: b.sent() == "__cf_bm=keep; _cfuvid=gone-soon; cf_clearance=secure-only")
        assert b.sent("http://api.example.com/v1/x") == "__cf_bm=keep; _cfuvid=gone-soon"
        a.upstream_set("_cfuvid=; Path=/; Expires=Thu, 01 Jan 1970 00:00:01 GMT")  # the upstream expires one
        await until(lambda: b.sent() == "__cf_bm=keep; cf_clearance=secure-only")

    with_proxies(redis_url, test)


def test_two_proxies_setting_different_cookies_at_once_keep_both(redis_url: str) -> None:
    async def test(a: Proxy, b: Proxy) -> None:
        await subscribed(a, b)
        a.upstream_set("__cf_bm=a; Path=/")
        b.upstream_set("cf_clearance=b; Path=/")  # before either heard of the other's
        await until(lambda: a.sent() == b.sent() == "__cf_bm=a; cf_clearance=b")

    with_proxies(redis_url, test)


def test_user_scopes_stay_apart(redis_url: str) -> None:
    async def test(a: Proxy, b: Proxy) -> None:
        await subscribed(a, b)
        a.upstream_set("__cf_bm=alice; Path=/", scope="alice")
        await until(lambda: b.sent(scope="alice") == "__cf_bm=alice")
        assert b.sent(scope="bob") is None and b.sent() is None

    with_proxies(redis_url, test)


async def a_later_proxy_sends(redis_url: str, cookies: str, earlier: Proxy) -> None:
    """A proxy started now reads the machine jar on its first use (as the addon does) and sends ``cookies``."""
    later = Proxy(redis_url)
    later.fleet.start()
    later.fleet.need(MACHINE_SCOPE)
    try:
        await until(lambda: later.sent() == cookies)
    finally:
        await earlier.fleet.close()
        await later.fleet.close()


def test_a_proxy_started_later_reads_the_fleets_jar_and_seeds_an_empty_one(redis_url: str) -> None:
    async def run() -> None:
        # A has a cookie in its file from before the fleet; Redis has never heard of its jar.
        from_file = UpstreamCookieJar()
        from_file.store(API, MACHINE_SCOPE, ["__cf_bm=from-a-file; Path=/"])
        a = Proxy(redis_url, jar=from_file)
        a.fleet.start()
        a.fleet.need(MACHINE_SCOPE)
        await until(lambda: MACHINE_SCOPE in a.fleet.synced)
        await until_written(a)
        await a_later_proxy_sends(redis_url, "__cf_bm=from-a-file", a)

    asyncio.run(run())


async def until_written(proxy: Proxy) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while proxy.fleet.unwritten or not await proxy.fleet.client.exists(scope_key(MACHINE_SCOPE)):
        assert loop.time() < deadline, "never written"
        await asyncio.sleep(0.02)


def test_redis_down_each_jar_goes_on_alone_and_catches_up(redis_server: RedisServer, redis_url: str) -> None:
    health = FleetHealth()

    async def test(a: Proxy, b: Proxy) -> None:
        await subscribed(a, b)
        a.upstream_set("__cf_bm=before; Path=/")
        await until(lambda: b.sent() == "__cf_bm=before")
        redis_server.stop()
        try:
            a.upstream_set("__cf_bm=during; Path=/")
            assert a.sent() == "__cf_bm=during"  # the local jar, at once
            await until(lambda: health.is_degraded(REDIS))
            assert a.fleet.unwritten == 1 and b.sent() == "__cf_bm=before"
        finally:
            redis_server.start()
        # Written when Redis is back; B reads it (announcement, or its resync after the outage).
        await until(lambda: b.sent() == "__cf_bm=during")
        await until(lambda: not health.is_degraded(REDIS))
        assert health.outages_seen[REDIS] == 1

    with_proxies(redis_url, test, health=health)


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"name": "__cf_bm"}',
                                   b'{"name": "__cf_bm", "domain": "api.example.com", "path": "/"}'])
def test_a_malformed_entry_in_redis_is_skipped(redis_url: str, value: bytes) -> None:
    async def test(a: Proxy, b: Proxy) -> None:
        await subscribed(a, b)
        a.upstream_set("__cf_bm=good; Path=/")
        await until(lambda: b.sent() == "__cf_bm=good")
        await a.fleet.client.hset(scope_key(MACHINE_SCOPE), "bad", value)  # type: ignore[misc]
        b.jar.replace_scope(MACHINE_SCOPE, [])
        await b.fleet.resync()
        assert b.sent() == "__cf_bm=good"

    with_proxies(redis_url, test)


def test_a_stopping_proxy_writes_what_it_had_not_written_yet(redis_url: str) -> None:
    async def run() -> None:
        a = Proxy(redis_url)  # its writer never runs: the change is still unwritten at the stop
        a.upstream_set("__cf_bm=last-change; Path=/")
        assert a.fleet.unwritten == 1
        a.fleet.write_rest()  # mitmproxy's done()
        await a_later_proxy_sends(redis_url, "__cf_bm=last-change", a)

    asyncio.run(run())
