"""The cookie jar addon's file: saved off the event loop, debounced, bounded in memory, flushed at shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.http import Headers
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.upstream.cookie_jar import JarChanges, read_scope, write_changes
from memory_routing.addons.upstream_cookies import SAVE_INTERVAL, UpstreamCookies
from memory_routing.flow_state import Route, set_route
from memory_routing.wire.protocol import ClientProtocol

API = "https://api.example.com/v1/chat/completions"
WAIT = 10  # seconds: a bound on every wait, never reached when things work


def routed(user_id: str, set_cookie: str | None = None):
    flow = tflow.tflow(req=tutils.treq(method=b"POST", headers=Headers(host="api.example.com")))
    flow.request.url = API
    set_route(flow, Route(decision=None, client_protocol=ClientProtocol.OPENAI, user_id=user_id))
    if set_cookie is not None:
        flow.response = tutils.tresp(headers=Headers(set_cookie=set_cookie))
    return flow


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingWriter:
    """Writes for real, records where and what; can hold a write until the test releases it."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[JarChanges] = []
        self.threads: list[threading.Thread] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.released_in_time: list[bool] = []
        if not hold:
            self.release.set()

    def __call__(self, path: Path, changes: JarChanges) -> None:
        self.threads.append(threading.current_thread())
        self.calls.append(changes)
        self.entered.set()
        self.released_in_time.append(self.release.wait(WAIT))
        write_changes(path, changes)

    def names_written(self, index: int) -> set[str]:
        return {entry["value"] for entries in self.calls[index].scopes.values() for entry in entries}


def configure_per_user(tctx, cookies: UpstreamCookies, path: Path, limit: int) -> None:
    tctx.configure(cookies, memory_routing_cookie_file=str(path), memory_routing_cookie_scope="user",
                   memory_routing_cookie_jar_limit=limit)


def recording_reader(reads: list[str]):
    def reader(path: Path, scope: str):
        reads.append(scope)
        return read_scope(path, scope)
    return reader


def saved_values(path: Path) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for entry in json.loads(path.read_text())["cookies"]:
        values.setdefault(entry["scope"], set()).add(entry["value"])
    return values


async def settled(cookies: UpstreamCookies) -> None:
    """Wait (bounded) for the write that is running, if any."""
    if cookies._saving is not None:
        await asyncio.wait_for(asyncio.wrap_future(cookies._saving[0]), WAIT)


def test_a_slow_save_runs_off_the_loop_and_does_not_hold_hooks(tmp_path: Path):
    writer = RecordingWriter(hold=True)
    cookies = UpstreamCookies(writer=writer)
    path = tmp_path / "jar.json"

    async def scenario() -> None:
        with taddons.context(cookies) as tctx:
            tctx.configure(cookies, memory_routing_cookie_file=str(path))
            assert cookies.responseheaders(routed("alice", "__cf_bm=one; Path=/")) is None
            # The write has started on its thread and is held there; the loop goes on meanwhile.
            assert await asyncio.to_thread(writer.entered.wait, WAIT)
            again = routed("alice")
            assert cookies.request(again) is None
            assert again.request.headers["cookie"] == "__cf_bm=one"
            cookies.responseheaders(routed("alice", "cf_clearance=two; Path=/"))
            assert len(writer.calls) == 1  # the second change waits for the running write
            writer.release.set()
            cookies.done()

    asyncio.run(scenario())
    assert writer.released_in_time == [True, True]
    assert all(thread is not threading.main_thread() for thread in writer.threads)
    assert writer.names_written(1) == {"one", "two"}
    assert saved_values(path) == {"machine": {"one", "two"}}


def test_saves_are_debounced_by_the_clock(tmp_path: Path):
    clock, writer = FakeClock(), RecordingWriter()
    cookies = UpstreamCookies(clock=clock, writer=writer)
    path = tmp_path / "jar.json"

    async def scenario() -> None:
        with taddons.context(cookies) as tctx:
            tctx.configure(cookies, memory_routing_cookie_file=str(path))
            cookies.responseheaders(routed("alice", "__cf_bm=v0; Path=/"))
            await settled(cookies)
            assert len(writer.calls) == 1  # the first change is saved at once
            for index in range(1, 20):  # a burst within the interval: one save due, none yet
                clock.now += SAVE_INTERVAL / 40
                cookies.responseheaders(routed("alice", f"__cf_bm=v{index}; Path=/"))
            assert len(writer.calls) == 1 and cookies._timer is not None
            cookies.done()  # shutdown writes what the timer would have
            assert len(writer.calls) == 2 and writer.names_written(1) == {"v19"}

            clock.now += SAVE_INTERVAL  # a change after a quiet interval is saved at once again
            cookies.responseheaders(routed("alice", "__cf_bm=later; Path=/"))
            await settled(cookies)
            assert len(writer.calls) == 3

    asyncio.run(scenario())
    assert saved_values(path) == {"machine": {"later"}}


def test_evicted_jars_are_saved_and_read_back(tmp_path: Path):
    writer = RecordingWriter()
    reads: list[str] = []
    cookies = UpstreamCookies(writer=writer, reader=recording_reader(reads))
    path = tmp_path / "jar.json"

    async def scenario() -> None:
        with taddons.context(cookies) as tctx:
            configure_per_user(tctx, cookies, path, limit=2)
            for user in ("alice", "bob", "carol", "dave"):
                cookies.responseheaders(routed(user, f"__cf_bm={user}-token; Path=/"))
                await settled(cookies)
            assert cookies.jar.resident_count == 2
            cookies.done()
            assert saved_values(path) == {u: {f"{u}-token"} for u in ("alice", "bob", "carol", "dave")}

            back = routed("alice")
            pending = cookies.request(back)  # alice's jar is in the file only: read back off the loop
            assert pending is not None and "cookie" not in back.request.headers
            await asyncio.wait_for(pending, WAIT)
            assert back.request.headers["cookie"] == "__cf_bm=alice-token"
            assert reads == ["alice"] and cookies.jar.resident_count == 2

            # bob is in the file only too: his new cookie waits for his old ones to be read back.
            pending = cookies.responseheaders(routed("bob", "cf_clearance=bob-new; Path=/"))
            assert pending is not None
            await asyncio.wait_for(pending, WAIT)
            cookies.done()

    asyncio.run(scenario())
    assert saved_values(path)["bob"] == {"bob-token", "bob-new"}
    assert saved_values(path)["alice"] == {"alice-token"}


def test_a_jar_pushed_out_before_its_save_comes_back_from_its_snapshot(tmp_path: Path):
    writer = RecordingWriter(hold=True)
    reads: list[str] = []
    cookies = UpstreamCookies(writer=writer, reader=recording_reader(reads))
    path = tmp_path / "jar.json"

    async def scenario() -> None:
        with taddons.context(cookies) as tctx:
            configure_per_user(tctx, cookies, path, limit=1)
            cookies.responseheaders(routed("alice", "__cf_bm=a; Path=/"))  # its save starts, held
            cookies.responseheaders(routed("bob", "__cf_bm=b; Path=/"))  # alice out (in the running write)
            cookies.responseheaders(routed("carol", "__cf_bm=c; Path=/"))  # bob out, in no write yet
            bob = routed("bob")
            assert cookies.request(bob) is None  # from the snapshot kept until his save
            assert bob.request.headers["cookie"] == "__cf_bm=b"
            alice = routed("alice")
            pending = cookies.request(alice)  # read back after the held write, on the same thread
            assert pending is not None
            writer.release.set()
            await asyncio.wait_for(pending, WAIT)
            assert alice.request.headers["cookie"] == "__cf_bm=a"
            cookies.done()

    asyncio.run(scenario())
    assert reads == ["alice"]
    assert saved_values(path) == {"alice": {"a"}, "bob": {"b"}, "carol": {"c"}}


def test_shutdown_flushes_and_a_restart_reads_everything(tmp_path: Path):
    clock = FakeClock()
    cookies = UpstreamCookies(clock=clock)
    path = tmp_path / "jar.json"

    async def run_once() -> None:
        with taddons.context(cookies) as tctx:
            tctx.configure(cookies, memory_routing_cookie_file=str(path), memory_routing_cookie_scope="user")
            for user in ("alice", "bob", "carol"):  # all but the first save wait for the clock
                cookies.responseheaders(routed(user, f"__cf_bm={user}; Path=/"))
            cookies.done()

    asyncio.run(run_once())
    restarted = UpstreamCookies()
    with taddons.context(restarted) as tctx:
        tctx.configure(restarted, memory_routing_cookie_file=str(path), memory_routing_cookie_scope="user",
                       memory_routing_cookie_jar_limit=1)
        flows = {user: routed(user) for user in ("alice", "bob", "carol")}
        for flow in flows.values():
            pending = restarted.request(flow)
            if pending is not None:
                asyncio.run(pending)
    assert {user: flow.request.headers.get("cookie") for user, flow in flows.items()} == {
        user: f"__cf_bm={user}" for user in flows
    }


@pytest.mark.parametrize("limit", [0, -3])
def test_jar_limit_must_be_positive(limit: int):
    cookies = UpstreamCookies()
    with taddons.context(cookies) as tctx:
        with pytest.raises(exceptions.OptionsError, match="memory_routing_cookie_jar_limit must be > 0"):
            tctx.configure(cookies, memory_routing_cookie_file="none", memory_routing_cookie_jar_limit=limit)


def test_without_a_file_jars_beyond_the_limit_are_dropped():
    cookies = UpstreamCookies(writer=lambda path, changes: pytest.fail("nothing to write"))
    with taddons.context(cookies) as tctx:
        tctx.configure(cookies, memory_routing_cookie_file="none", memory_routing_cookie_scope="user",
                       memory_routing_cookie_jar_limit=2)
        for user in ("alice", "bob", "carol", "dave", "erin"):
            assert cookies.responseheaders(routed(user, f"__cf_bm={user}; Path=/")) is None
        assert cookies.jar.resident_count == 2 and not cookies.jar.has_changes
        back = routed("alice")
        assert cookies.request(back) is None and "cookie" not in back.request.headers  # gone, not waited for
        kept = routed("erin")
        cookies.request(kept)
    assert kept.request.headers["cookie"] == "__cf_bm=erin"


def test_a_reload_of_the_script_writes_the_last_cookies_from_synchronous_code(tmp_path: Path):
    from mitmproxy import hooks

    from memory_routing.mitm.pipeline import AddonPipeline

    writer = RecordingWriter(hold=True)
    cookies = UpstreamCookies(writer=writer)
    pipeline = AddonPipeline([cookies])
    path = tmp_path / "jar.json"

    async def scenario() -> None:
        with taddons.context(pipeline) as tctx:
            tctx.configure(pipeline, memory_routing_cookie_file=str(path))
            cookies.responseheaders(routed("alice", "__cf_bm=one; Path=/"))
            assert await asyncio.to_thread(writer.entered.wait, WAIT)  # a save is running
            cookies.responseheaders(routed("alice", "cf_clearance=two; Path=/"))  # and one is due
            writer.release.set()
            # No await from here on: the running save's callback on the loop cannot run. This is
            # how mitmproxy calls done when addon.py changes on disk (AddonManager.invoke_addon_sync).
            tctx.master.addons.invoke_addon_sync(pipeline, hooks.DoneHook())
            assert saved_values(path) == {"machine": {"one", "two"}}
            assert not cookies.jar.has_changes

    asyncio.run(scenario())
    assert len(writer.calls) == 2 and writer.released_in_time == [True, True]
    assert all(thread is not threading.main_thread() for thread in writer.threads)
