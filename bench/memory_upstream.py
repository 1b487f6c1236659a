"""Fake OpenAI chat/completions upstream for the memory benchmark, run as its own process.

The replay scripts each answer: before a model call it ``PUT``s the text the upstream must answer
with (speaker B's next turn) to ``/bench/next-answer``; the upstream answers the next
chat/completions call with it (whole or as a stream) and keeps the request it received, which
the replay reads back from ``/bench/last`` to see what the proxy injected. Like the real API it
refuses a request without the expected bearer key (401) or of the wrong shape (400), in
OpenAI's error shape.

    python bench/memory_upstream.py --api-key KEY   # prints the port it listens on, then serves
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_BODY = 64 * 1024 * 1024


class RequestRefused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def validate_chat_request(body: Any) -> None:
    """Raise RequestRefused where OpenAI's chat/completions would refuse the body."""
    if not isinstance(body, dict):
        raise RequestRefused(400, "We could not parse the JSON body of your request.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise RequestRefused(400, "you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestRefused(400, "'messages' must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        param = f"messages.[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestRefused(400, f"Invalid value for '{param}.role'", f"{param}.role")
        content = message.get("content")
        if content is None and message["role"] == "assistant" and message.get("tool_calls"):
            continue
        if isinstance(content, list):
            if not all(isinstance(part, dict) and isinstance(part.get("type"), str) for part in content):
                raise RequestRefused(400, f"Invalid content parts in '{param}.content'", f"{param}.content")
        elif not isinstance(content, str):
            raise RequestRefused(400, f"Invalid type for '{param}.content'", f"{param}.content")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise RequestRefused(400, "Invalid type for 'stream': expected a boolean", "stream")


def completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-memory-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def stream_events(model: str, text: str) -> list[bytes]:
    """The answer as OpenAI's server-sent events: a few content deltas, the finish, [DONE]."""
    words = text.split(" ")
    pieces = [" ".join(words[i:i + 8]) + (" " if i + 8 < len(words) else "") for i in range(0, len(words), 8)]
    chunks = [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in pieces]
    events = []
    for delta in chunks:
        event = {"id": "chatcmpl-memory-bench", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        events.append(b"data: " + json.dumps(event).encode() + b"\n\n")
    last = {"id": "chatcmpl-memory-bench", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    events.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class Script:
    """The next answer and the requests received; shared by the handler threads."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.next_answer: str | None = None
        self.count = 0
        self.last: dict[str, Any] | None = None

    def take(self, headers: dict[str, str], body: dict[str, Any]) -> str | None:
        with self.lock:
            answer, self.next_answer = self.next_answer, None
            self.count += 1
            self.last = {"count": self.count, "headers": headers, "body": body}
            return answer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the proxy's requests are the benchmark's business, not stderr's

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, refused: RequestRefused) -> None:
        kind = "authentication_error" if refused.status == 401 else "invalid_request_error"
        self._send_json(refused.status, {"error": {"message": refused.message, "type": kind,
                                                   "param": refused.param, "code": None}})

    def _read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise RequestRefused(413, "request too large")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            raise RequestRefused(400, "We could not parse the JSON body of your request.") from None

    def do_GET(self) -> None:
        if self.path == "/bench/last":
            with self.script.lock:
                self._send_json(200, self.script.last or {"count": 0})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_PUT(self) -> None:
        try:
            if self.path != "/bench/next-answer":
                raise RequestRefused(404, f"no route {self.path}")
            body = self._read_json()
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise RequestRefused(400, "expected {\"text\": str}")
        except RequestRefused as refused:
            self._refuse(refused)
            return
        with self.script.lock:
            self.script.next_answer = body["text"]
        self._send_json(200, {"ok": True})

    def do_POST(self) -> None:
        try:
            if self.path.split("?", 1)[0] not in ("/v1/chat/completions", "/chat/completions"):
                raise RequestRefused(404, f"Invalid URL (POST {self.path})")
            if self.headers.get("authorization") != f"Bearer {self.script.api_key}":
                raise RequestRefused(401, "Incorrect API key provided.")
            body = self._read_json()
            validate_chat_request(body)
        except RequestRefused as refused:
            self._refuse(refused)
            return
        answer = self.script.take({k.lower(): v for k, v in self.headers.items()}, body)
        if answer is None:
            # Not something the real API does: the replay forgot to script this call.
            self._send_json(500, {"error": {"message": "memory bench: no scripted answer for this call",
                                            "type": "server_error"}})
            return
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for event in stream_events(body["model"], answer):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send_json(200, completion(body["model"], answer))


def make_server(api_key: str, port: int = 0) -> ThreadingHTTPServer:
    handler = type("ScriptedHandler", (Handler,), {"script": Script(api_key)})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    server = make_server(args.api_key)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
