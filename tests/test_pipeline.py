"""AddonPipeline: the one object mitmproxy dispatches to, calling the stage addons in order."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.test import taddons, tflow

from memory_routing.addons import create_addons, create_stages
from memory_routing.mitm.pipeline import AddonPipeline


class Recording:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.label, self.calls = name, calls

    def request(self, flow) -> None:
        self.calls.append(f"{self.label}.request")


class AsyncStage(Recording):
    def request(self, flow):
        async def later() -> None:
            await asyncio.sleep(0)  # yields to the loop: the next stage must still wait for it
            self.calls.append(f"{self.label}.request")

        return later()


class Failing(Recording):
    def request(self, flow) -> None:
        self.calls.append(f"{self.label}.request")
        raise RuntimeError("boom")

    def configure(self, updated) -> None:
        raise exceptions.OptionsError("memory_routing_x: bad")


class ResponseOnly:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.label, self.calls = name, calls

    def response(self, flow) -> None:
        self.calls.append(f"{self.label}.response")


def test_calls_the_stages_that_handle_an_event_in_order():
    calls: list[str] = []
    pipeline = AddonPipeline([Recording("a", calls), ResponseOnly("b", calls), Recording("c", calls)])
    assert pipeline.request(tflow.tflow()) is None  # all synchronous: no coroutine is made
    pipeline.response(tflow.tflow())
    assert calls == ["a.request", "c.request", "b.response"]
    # Events no stage handles cost mitmproxy one failed lookup, nothing more.
    assert getattr(pipeline, "tcp_start", None) is None and getattr(pipeline, "update", None) is None
    # Sub-addons would be walked and dispatched to by mitmproxy a second time.
    assert not hasattr(pipeline, "addons")


def test_an_awaitable_is_awaited_before_the_next_stage_runs():
    calls: list[str] = []
    pipeline = AddonPipeline([Recording("a", calls), AsyncStage("b", calls), Recording("c", calls)])
    pending = pipeline.request(tflow.tflow())
    assert calls == ["a.request"]  # b's work is pending, c has not run
    asyncio.run(pending)
    assert calls == ["a.request", "b.request", "c.request"]


def test_a_failing_stage_is_logged_and_the_later_stages_still_run(caplog):
    calls: list[str] = []
    pipeline = AddonPipeline([Failing("a", calls), AsyncStage("b", calls), Failing("c", calls), Recording("d", calls)])
    with caplog.at_level(logging.ERROR):
        asyncio.run(pipeline.request(tflow.tflow()))
    assert calls == ["a.request", "b.request", "c.request", "d.request"]
    assert [r.getMessage() for r in caplog.records] == ["Addon error: boom", "Addon error: boom"]


def test_configuration_errors_reach_mitmproxy():
    calls: list[str] = []
    pipeline = AddonPipeline([Failing("a", calls), Recording("b", calls)])
    with pytest.raises(exceptions.OptionsError):
        pipeline.configure({"memory_routing_x"})


def test_mitmproxy_sees_one_object_that_reaches_every_stage_hook():
    (pipeline,) = create_addons()
    assert isinstance(pipeline, AddonPipeline)
    stages = create_stages()
    # Every hook of every stage is dispatched, in the stages' order.
    for hook_name in hooks.all_hooks:
        expected = [type(s).__name__ for s in stages if callable(getattr(s, hook_name, None))]
        assert [type(h.__self__).__name__ for h in pipeline.handlers(hook_name)] == expected, hook_name
    with taddons.context(pipeline) as tctx:
        ours = [a for a in tctx.master.addons.lookup.values() if type(a).__module__.startswith("memory_routing")]
        assert ours == [pipeline]
