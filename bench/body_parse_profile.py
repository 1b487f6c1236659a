"""CPU of the request side of memory + router on typical model calls, and its JSON codec calls.

In-process (mitmproxy's test harness, no sockets): N chat requests of a coding client's shape
(a system prompt, 40 turns, ~60 KB) through EmbeddedMemory.request then ModelRouter.request,
half for a user with memories (recall injected), half for one without. Prints CPU ms per
request (the best and the median of ROUNDS unprofiled rounds) and how many JSON decodes/encodes
ran (a cProfile pass). Run it against two checkouts to
compare (PYTHONPATH=<checkout> python bench/body_parse_profile.py).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.memory import EmbeddedMemory
from memory_routing.memory.records import NewMemory
from memory_routing.memory.store import SQLiteMemoryStore
from memory_routing.routing.planner import RoutePlanner
from memory_routing.llm.providers import ProviderResolver
from memory_routing.addons.router import ModelRouter

REQUESTS = int(os.environ.get("REQUESTS", "200"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config}
memory:
  backend: local
"""


def typical_body(index: int) -> bytes:
    messages = [{"role": "system", "content": "You are a careful coding assistant. " * 60}]
    for turn in range(40):
        messages.append({"role": "user", "content": f"Turn {turn}: please look at function f{turn} and fix it. " * 10})
        messages.append({"role": "assistant", "content": f"Here is the fix for f{turn}:\n```python\n" + "x = 1\n" * 40 + "```"})
    messages.append({"role": "user", "content": f"What does my cat Miso like? ({index})"})
    return json.dumps({"model": "gpt-alias", "stream": True, "messages": messages}).encode()


def flow_for(body: bytes, user: str):
    request = tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=body,
                          headers=Headers(host="memory-routing.localhost", content_type="application/json",
                                          x_memory_user_id=user, x_memory_conversation_id="c1"))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
    return flow


def main() -> None:
    workdir = Path(tempfile.mkdtemp())
    (workdir / "config.yaml").write_text(CONFIG)
    store = SQLiteMemoryStore(workdir / "memory.sqlite3")
    store.add_many([NewMemory("alice", "old", "cli", "m", "user", "My cat Miso loves tuna.", 1683504000.0)])
    routing = RoutingConfig()
    memory = EmbeddedMemory(routing, SimpleNamespace(memory=store, before_close=[]))
    router = ModelRouter(routing, RoutePlanner(ProviderResolver()))
    bodies = [typical_body(i) for i in range(REQUESTS)]
    with taddons.context(routing, memory, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(workdir / "config.yaml"))

        async def run_all() -> None:
            for index, body in enumerate(bodies):
                flow = flow_for(body, "alice" if index % 2 else "bob")
                pending = memory.request(flow)
                if pending is not None:
                    await pending
                router.request(flow)
                assert flow.response is None and flow.request.host == "llm.internal", flow.response

        asyncio.run(run_all())  # warm-up: caches, LiteLLM's lazy imports
        rounds = []
        for _ in range(ROUNDS):  # unprofiled; the least disturbed round counts (a shared machine)
            started = time.process_time()
            asyncio.run(run_all())
            rounds.append(time.process_time() - started)
        cpu = min(rounds)
        profile = cProfile.Profile()  # a separate pass for the call counts
        profile.enable()
        asyncio.run(run_all())
        profile.disable()
    memory.done()
    store.close()
    stats = pstats.Stats(profile)
    decodes = encodes = 0
    decode_s = encode_s = 0.0
    for (filename, _, name), (_, calls, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith("json/decoder.py") and name == "decode":
            decodes += calls
            decode_s += cumulative
        if filename.endswith("json/encoder.py") and name == "encode":
            encodes += calls
            encode_s += cumulative
    print(json.dumps({
        "python": sys.version.split()[0], "requests": REQUESTS, "body_bytes": len(bodies[0]),
        "cpu_ms_per_request": round(cpu * 1000 / REQUESTS, 3),  # best of ROUNDS, no profiler
        "cpu_ms_per_request_median": round(sorted(rounds)[len(rounds) // 2] * 1000 / REQUESTS, 3),
        "json_decodes_per_request": round(decodes / REQUESTS, 2),
        "json_encodes_per_request": round(encodes / REQUESTS, 2),
        "json_decode_ms_per_request_profiled": round(decode_s * 1000 / REQUESTS, 3),
        "json_encode_ms_per_request_profiled": round(encode_s * 1000 / REQUESTS, 3),
    }))


if __name__ == "__main__":
    main()
