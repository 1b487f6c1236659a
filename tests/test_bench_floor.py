"""The bench's floor addon does the work it stands for: a floor that did less would flatter the
ceiling it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy.http import Headers, Response
from mitmproxy.test import tflow, tutils

from bench import floor_addon


def test_the_floor_rewrites_the_body_and_key_and_logs_the_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BENCH_FLOOR_DIR", str(tmp_path))
    floor = floor_addon.FloorRouting()
    body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=body, headers=Headers(
        host="bench", user_agent="OpenAI/Python 1.0", authorization="Bearer sk-client", content_length=str(len(body)))))
    floor.request(flow)
    sent = json.loads(flow.request.raw_content)
    assert sent == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert flow.request.headers.get_all("authorization") == ["Bearer sk-bench-config"]
    assert flow.request.headers["content-length"] == str(len(flow.request.raw_content))
    flow.response = Response.make(200, json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode(),
                                  {"content-type": "application/json"})
    floor.response(flow)
    floor.done()
    (log,) = tmp_path.glob("floor-*.jsonl")
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["user_id"], line["alias"], line["input_tokens"], line["output_tokens"]) == ("openai-python", "bench-model", 3, 4)
