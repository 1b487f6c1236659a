"""The least a routing addon does per model call, for `make bench`'s floor figure.

Not part of the proxy: a mitmproxy script run on bare mitmdump (`-s bench/floor_addon.py`) in
the same rounds as the addon. Per call it does only what no routing addon can skip: pick the
memory user id from the User-Agent, parse the JSON body, put the provider's model name and key
in, encode the body again, read the answer's token usage and write one JSON line of it. No
memory, no usage rows, no cookies, caps, limits or error shapes (and a stream's usage is not
read). Its capacity against bare mitmdump for plain calls is the ceiling that Python code run per
call inside mitmproxy's process can reach.
"""

import json
import os
import re
import tempfile
import time
from pathlib import Path

_USER_AGENT = re.compile(r"^(Async)?OpenAI/Python ")
_PROVIDER_MODEL = "gpt-4o-mini"
_PROVIDER_KEY = b"Bearer sk-bench-config"


class FloorRouting:
    def __init__(self) -> None:
        directory = Path(os.environ.get("BENCH_FLOOR_DIR") or tempfile.gettempdir())
        self.log = open(directory / f"floor-{os.getpid()}.jsonl", "w")  # noqa: SIM115 - open for the addon's lifetime, closed in done()

    def request(self, flow) -> None:
        request = flow.request
        user_id = "openai-python" if _USER_AGENT.match(request.headers.get("user-agent", "")) else "default"
        document = json.loads(request.raw_content)
        alias = document.get("model")
        document["model"] = _PROVIDER_MODEL
        body = json.dumps(document).encode()
        request.headers.fields = (
            *(field for field in request.headers.fields if field[0].lower() not in (b"authorization", b"content-length")),
            (b"authorization", _PROVIDER_KEY),
            (b"content-length", str(len(body)).encode()),
        )
        request.raw_content = body
        flow.metadata["bench_floor"] = (user_id, alias, time.time())

    def response(self, flow) -> None:
        user_id, alias, started = flow.metadata["bench_floor"]
        usage: dict[str, int] = {}
        if flow.response.headers.get("content-type", "").startswith("application/json"):
            usage = json.loads(flow.response.raw_content).get("usage") or {}
        self.log.write(json.dumps({
            "at": started, "user_id": user_id, "alias": alias, "status": flow.response.status_code,
            "input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens"),
            "latency_ms": round((time.time() - started) * 1000, 2),
        }) + "\n")
        self.log.flush()

    def done(self) -> None:
        self.log.close()


addons = [FloorRouting()]
