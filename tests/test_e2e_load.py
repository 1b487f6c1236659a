"""Load through one mitmdump: 200 concurrent streams, then 2,000 requests; no unexpected error.

Loopback only, every wait bounded. This checks correctness under load (no dropped, mixed-up or
failed answer), not speed: speed is `make bench`'s job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from fake_upstream import FakeUpstream
from harness import RunningProxy, running_proxy

pytestmark = pytest.mark.e2e

CONCURRENT_STREAMS = 200
REQUESTS = 2000
REQUEST_CONCURRENCY = 50
ALL_STARTED_WAIT = 60.0
TOTAL_WAIT = 240.0


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("load")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({"model_list": [
        {"model_name": "gpt-alias", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1", "api_key": "os.environ/MR_LOAD_KEY"}},
    ]}))
    # The in-flight cap would queue the streams (that is its job); here they must all be open at once.
    args = ["--set", f"memory_routing_max_in_flight={CONCURRENT_STREAMS + 10}", "--set", "memory_routing_flow_log="]
    with running_proxy(workdir, config, env={"MR_LOAD_KEY": "sk-load"}, extra_args=args) as running:
        yield running


async def stream_once(client: httpx.AsyncClient, index: int) -> str:
    body = {"model": "gpt-alias", "stream": True, "messages": [{"role": "user", "content": str(index)}]}
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-memory-user-id": f"u{index}"}) as answer:
        assert answer.status_code == 200, await answer.aread()
        async for line in answer.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    return text


async def concurrent_streams(proxy: RunningProxy, upstream: FakeUpstream) -> list[str]:
    limits = httpx.Limits(max_connections=CONCURRENT_STREAMS, max_keepalive_connections=CONCURRENT_STREAMS)
    async with httpx.AsyncClient(base_url=proxy.gateway_url, limits=limits, timeout=TOTAL_WAIT) as client:
        tasks = [asyncio.create_task(stream_once(client, i)) for i in range(CONCURRENT_STREAMS)]
        deadline = time.monotonic() + ALL_STARTED_WAIT
        while upstream.in_flight < CONCURRENT_STREAMS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        upstream.release()
        return await asyncio.wait_for(asyncio.gather(*tasks), TOTAL_WAIT)


async def many_requests(proxy: RunningProxy) -> list[int]:
    limits = httpx.Limits(max_connections=REQUEST_CONCURRENCY, max_keepalive_connections=REQUEST_CONCURRENCY)
    gate = asyncio.Semaphore(REQUEST_CONCURRENCY)

    async def one(client: httpx.AsyncClient, index: int) -> int:
        async with gate:
            answer = await client.post("/v1/chat/completions", json={"model": "gpt-alias", "messages": []})
            assert answer.json()["choices"][0]["message"]["content"] == "Hello from OpenAI"
            return answer.status_code

    async with httpx.AsyncClient(base_url=proxy.gateway_url, limits=limits, timeout=TOTAL_WAIT) as client:
        return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(REQUESTS))), TOTAL_WAIT)


def test_200_concurrent_streams(proxy: RunningProxy, upstream: FakeUpstream):
    upstream.hold_streams = True  # every stream waits after its first event until all are open
    try:
        texts = asyncio.run(concurrent_streams(proxy, upstream))
    finally:
        upstream.release()
    assert upstream.max_in_flight == CONCURRENT_STREAMS
    assert texts == ["Hello"] * CONCURRENT_STREAMS
    users = {request.headers["x-sm-user-id"] for request in upstream.requests}
    assert users == {f"u{i}" for i in range(CONCURRENT_STREAMS)}


def test_2000_requests_without_an_error(proxy: RunningProxy, upstream: FakeUpstream):
    statuses = asyncio.run(many_requests(proxy))
    assert statuses == [200] * REQUESTS
    assert len(upstream.requests) == REQUESTS
    assert "Traceback" not in proxy.log() and "internal error" not in proxy.log()
