"""A local stand-in for the LLM APIs: OpenAI, Anthropic, Gemini, and Supermemory's router form.

It records every request (with the connection it came on) and answers in each API's own
shape, JSON or server-sent events. Tests can hold a stream after its first event until they
release it, to prove that events reach the client while the upstream is still sending.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

GATE_TIMEOUT_SECONDS = 60.0  # a safety net only: tests release the gate themselves
HUGE_BODY_BYTES = 8 * 1024 * 1024
# Faults a request asks for with the header x-fake-fault:
#   status=NNN  answer NNN with the provider's own JSON error
#   hang        read the request, then send nothing until released (bounded), and close
#   cut         start the answer (two events of a stream, half of a JSON body), then drop the connection
#   lockstep    stream the events one at a time: each after the test allowed it (allow_event), bounded
#   huge        a JSON answer of HUGE_BODY_BYTES
#   page=NNN    answer NNN with an nginx-style HTML error page (as a proxy in front of a model would;
#               a 503 with retry-after: 7)
#   page-chunked=NNN  the same page without a content-length (chunked)
#   not-json    answer 200 with content-type application/json and a body that is not JSON
FAULT_HEADER = "x-fake-fault"
# A request may ask for prompt-cache and reasoning counts in its answer's usage, each as its API
# reports them: x-fake-cache: read=N,write=M,reasoning=K (each optional; see with_cache_usage).
CACHE_HEADER = "x-fake-cache"
SUPERMEMORY_PREFIX = "/v3/"
USAGE_IN, USAGE_OUT = 11, 7


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int
    via_supermemory: bool
    api_path: str  # the provider path (inside the Supermemory URL when wrapped)
    api_host: str | None  # the provider host named inside a Supermemory URL

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    host: str = "127.0.0.1"
    # Behave like an origin behind Cloudflare: hand out __cf_bm once, then answer any request
    # without it with 429 "error code: 1200".
    cloudflare: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    # Connection id -> the peer's (the proxy's) port, while the connection is open: a test can
    # follow its own connection whatever other connections do meanwhile.
    open_connection_ports: dict[int, int] = field(default_factory=dict)
    broken_writes: int = 0  # answers the client side stopped reading (connection gone)
    in_flight: int = 0
    max_in_flight: int = 0
    cf_token: str | None = None
    # When set, streams pause after the first event until release() (bounded).
    hold_streams: bool = False
    # When set, every request waits, once recorded and counted in flight, until release() (bounded).
    hold_requests: bool = False
    # Check request bodies the way the real APIs do (required fields, roles, unknown keys) and
    # answer their 400 otherwise: the judge of what a translating proxy sends.
    strict: bool = False
    # Behave like a tool-using model (see agent_answer): call Bash with the command the prompt
    # names, then answer in text once the tool's result is in.
    agent: bool = False
    _gate: threading.Event = field(default_factory=threading.Event)
    _event_permits: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=itertools.count)

    def start(self) -> FakeUpstream:
        self.server = _Server((self.host, 0), _Handler)
        self.server.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_port}"

    def release(self) -> None:
        self._gate.set()

    def allow_event(self) -> None:
        """Let a "lockstep" stream send its next event."""
        self._event_permits.release()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections = 0
            self.max_in_flight = 0
            self.broken_writes = 0
        self.hold_streams = self.hold_requests = False
        self._gate.clear()
        self._event_permits = threading.Semaphore(0)

    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _cloudflare_admits(self, cookie_header: str) -> tuple[bool, str | None]:
        """(admitted, Set-Cookie to send): the first caller gets the cookie, later ones need it."""
        with self._lock:
            if self.cf_token and f"__cf_bm={self.cf_token}" in cookie_header:
                return True, None
            if self.cf_token is None:
                self.cf_token = f"cf{next(self._ids)}"
                return True, f"__cf_bm={self.cf_token}; Path=/; Max-Age=1800; HttpOnly; SameSite=None"
            return False, None

    def _new_connection(self, peer_port: int) -> int:
        with self._lock:
            self.connections += 1
            self.open_connections += 1
            connection_id = next(self._ids)
            self.open_connection_ports[connection_id] = peer_port
            return connection_id

    def _connection_closed(self, connection_id: int) -> None:
        with self._lock:
            self.open_connections -= 1
            self.open_connection_ports.pop(connection_id, None)

    def _broken_write(self) -> None:
        with self._lock:
            self.broken_writes += 1


class _Server(ThreadingHTTPServer):
    # Read by listen() in the constructor: a load test opens hundreds of connections at once.
    request_queue_size = 1024
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def fake(self) -> FakeUpstream:
        return self.server.fake  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.fake._new_connection(self.client_address[1])

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.fake._connection_closed(self.connection_id)

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            self.fake._broken_write()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.fake._enter()
        try:
            self._post()
        finally:
            self.fake._leave()

    def _post(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path, host, via_supermemory = self.path, None, False
        if path.startswith(SUPERMEMORY_PREFIX + "http"):
            inner = urlsplit(path[len(SUPERMEMORY_PREFIX):])
            path = inner.path + (f"?{inner.query}" if inner.query else "")
            host, via_supermemory = inner.netloc, True
        self.fake._record(
            RecordedRequest(
                method="POST",
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                connection=self.connection_id,
                via_supermemory=via_supermemory,
                api_path=path,
                api_host=host,
            )
        )
        extra: dict[str, Any] = (
            {"x-supermemory-conversation-id": "conv-fake", "x-supermemory-context-tokens": "42"} if via_supermemory else {}
        )
        if self.fake.hold_requests:
            self.fake._gate.wait(GATE_TIMEOUT_SECONDS)
        set_cookies = self.headers.get_all("x-fake-set-cookie") or []
        if self.headers.get("x-fake-cloudflare-error") or self.fake.cloudflare:
            admitted, cookie = self.fake._cloudflare_admits(self.headers.get("cookie", ""))
            if self.headers.get("x-fake-cloudflare-error") or not admitted:
                self._cloudflare_1200()
                return
            if cookie:
                set_cookies.append(cookie)
        if set_cookies:
            extra["set-cookie"] = set_cookies
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "bad json"}}, extra)
            return
        route = path.split("?", 1)[0]
        model = payload.get("model", "")
        stream = bool(payload.get("stream"))
        if self.fake.strict and (problem := native_request_problem(route, self.headers, payload)):
            self._native_error(route, 400, problem, extra)
            return
        tools = payload.get("tools") or []
        self.cache_counts = _cache_counts(self.headers.get(CACHE_HEADER, ""))
        self.route = route
        if fault := self.headers.get(FAULT_HEADER):
            self._fault(fault, route, model, stream, extra)
            return
        if self.fake.agent and (turn := agent_turn(route, payload)) is not None:
            self._agent_answer(route, model, stream, tools, turn, extra, len(payload.get("messages") or []))
            return
        if route.endswith("/chat/completions"):
            if stream:
                self._sse(_openai_tool_events(model, tools) if tools else _openai_chat_events(model), extra)
            else:
                self._json(200, _openai_tool_call(model, tools) if tools else _openai_chat(model), extra)
        elif route.endswith("/responses"):
            self._json(200, {"id": "resp_1", "object": "response", "model": model, "output": [],
                             "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT, "total_tokens": 18}}, extra)
        elif route.endswith("/embeddings"):
            self._json(200,
                       {"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                             "usage": {"prompt_tokens": USAGE_IN, "total_tokens": USAGE_IN}}, extra)
        elif route.endswith("/completions"):
            self._json(200, {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model,
                             "choices": [{"text": "ok", "index": 0, "finish_reason": "stop", "logprobs": None}],
                             "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": 18}}, extra)
        elif route == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": USAGE_IN}, extra)
        elif route == "/v1/messages":
            if stream:
                self._sse(_anthropic_tool_events(model, tools) if tools else _anthropic_events(model), extra)
            else:
                self._json(200, _anthropic_tool_use(model, tools) if tools else _anthropic_message(model), extra)
        elif m := re.match(r"^/(v1|v1beta)/models/([^/:]+):(generateContent|streamGenerateContent)$", route):
            if m.group(3) == "streamGenerateContent":
                self._sse(_gemini_tool_events(m.group(2), tools) if tools else _gemini_events(m.group(2)), extra)
            else:
                answer = _gemini_function_call(m.group(2), tools) if tools else _gemini_answer(m.group(2), "Hello from Gemini")
                self._json(200, answer, extra)
        else:
            self._json(404, {"error": {"message": f"fake upstream has no {route}"}}, extra)

    def _agent_answer(
        self, route: str, model: str, stream: bool, tools: list[Any], turn: dict[str, Any] | str, extra: dict[str, Any],
        position: int = 0,
    ) -> None:
        """``turn``: the Bash tool's arguments to call it with, or the final text. The call's id is
        the conversation's position, as a real model's ids are unique within a conversation (a
        continued Claude Code session resends the earlier calls)."""
        tools = [{"name": AGENT_TOOL}]
        if route == "/v1/messages":
            if isinstance(turn, str):
                events, whole = _anthropic_events(model, turn), _anthropic_message(model, turn)
            else:
                events, whole = _anthropic_tool_events(model, tools, turn), _anthropic_tool_use(model, tools, turn)
        elif isinstance(turn, str):
            events, whole = _openai_chat_events(model, turn), _openai_chat(model, turn)
        else:
            events, whole = _openai_tool_events(model, tools, turn), _openai_tool_call(model, tools, turn)
        if not isinstance(turn, str):
            events, whole = _with_call_id((events, whole), f"agent{position}")
        if stream:
            self._sse(events, extra)
        else:
            self._json(200, whole, extra)

    def _native_error(self, route: str, status: int, message: str, extra: dict[str, Any]) -> None:
        if route.endswith("/messages"):
            kind = {529: "overloaded_error", 429: "rate_limit_error", 400: "invalid_request_error"}.get(status, "api_error")
            self._json(status, {"type": "error", "error": {"type": kind, "message": message}}, extra)
        elif "/models/" in route:
            kind = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED"}.get(status, "INTERNAL")
            self._json(status, {"error": {"code": status, "message": message, "status": kind}}, extra)
        else:
            kind = "invalid_request_error" if status == 400 else "server_error"
            self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, extra)

    def _fault(self, fault: str, route: str, model: str, stream: bool, extra: dict[str, Any]) -> None:
        if fault.startswith("status="):
            status = int(fault.split("=", 1)[1])
            self._native_error(route, status, f"fake {status}", extra)
        elif fault == "hang":
            self.fake._gate.wait(GATE_TIMEOUT_SECONDS)
            self.close_connection = True
        elif fault == "cut":
            if stream:
                self._sse(_anthropic_events(model) if route.endswith("/messages") else _openai_chat_events(model),
                          extra, stop_after=2)
            else:
                body = json.dumps(_openai_chat(model)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
            self._drop()
        elif fault == "lockstep":
            self._sse(_anthropic_events(model) if route.endswith("/messages") else _openai_chat_events(model),
                      extra, lockstep=True)
        elif fault.startswith(("page=", "page-chunked=")):
            status = int(fault.split("=", 1)[1])
            self._html_page(status, chunked=fault.startswith("page-chunked="))
        elif fault == "not-json":
            body = b"<html><body>Welcome! Please sign in to use this network.</body></html>"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif fault == "huge":
            filler = "x" * HUGE_BODY_BYTES
            self._json(200, _openai_chat(model) | {"filler": filler}, extra)
        else:
            raise ValueError(f"unknown fault {fault!r}")

    def _html_page(self, status: int, chunked: bool) -> None:
        reason = self.responses.get(status, ("Error",))[0]
        body = (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
                f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n"
                "</body>\r\n</html>\r\n").encode()
        self.send_response_only(status)
        self.send_header("server", "nginx/1.25.3")
        self.send_header("content-type", "text/html")
        if status == 503:
            self.send_header("retry-after", "7")
        if chunked:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self._chunk(body)
            self._chunk(b"")
        else:
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _drop(self) -> None:
        """Close the connection abruptly, mid-answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _json(self, status: int, payload: Any, extra: dict[str, Any]) -> None:
        body = json.dumps(self._with_cache(payload)).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self._send_extra(extra)
        self.end_headers()
        self.wfile.write(body)

    def _send_extra(self, extra: dict[str, Any]) -> None:
        for name, value in extra.items():
            for item in value if isinstance(value, list) else [value]:
                self.send_header(name, item)

    def _cloudflare_1200(self) -> None:
        body = b"error code: 1200"
        self.send_response(429)
        self.send_header("server", "cloudflare")
        self.send_header("cf-ray", "8f00000000000000-FRA")
        self.send_header("content-type", "text/plain; charset=UTF-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _sse(
        self, events: list[tuple[str | None, Any]], extra: dict[str, str], *, stop_after: int | None = None,
        lockstep: bool = False,
    ) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self._send_extra(extra)
        self.end_headers()
        for index, (event, data) in enumerate(events):
            if index == stop_after:
                return
            data = self._with_cache(data)
            text = (f"event: {event}\n" if event else "") + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
            self._chunk(text.encode())
            if index == 0 and self.fake.hold_streams:
                self.fake._gate.wait(GATE_TIMEOUT_SECONDS)
            if lockstep and index < len(events) - 1:
                self.fake._event_permits.acquire(timeout=GATE_TIMEOUT_SECONDS)
        self._chunk(b"")

    def _with_cache(self, payload: Any) -> Any:
        counts = getattr(self, "cache_counts", None)
        return with_cache_usage(self.route, payload, counts) if counts else payload

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _openai_chat(model: str, text: str = "Hello from OpenAI") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": USAGE_IN + USAGE_OUT},
    }


def _openai_chat_events(model: str, text: str = "Hello") -> list[tuple[str | None, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
                **({"usage": usage} if usage else {})}

    return [
        (None, chunk({"role": "assistant", "content": text[:3]})),
        (None, chunk({"content": text[3:]})),
        (None, chunk({}, "stop")),
        (None, chunk({}, usage={"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": 18})),
        (None, "[DONE]"),
    ]


def _anthropic_message(model: str, text: str = "Hello from Claude") -> dict[str, Any]:
    return {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT},
    }


def _anthropic_events(model: str, text: str = "Hello from Claude") -> list[tuple[str | None, Any]]:
    start = _anthropic_message(model) | {"content": [], "stop_reason": None,
                                         "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[:5]}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[5:]}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": USAGE_OUT}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def _gemini_answer(model: str, text: str, usage: bool = True) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "modelVersion": model,
    }
    if usage:
        answer["usageMetadata"] = {"promptTokenCount": USAGE_IN, "candidatesTokenCount": USAGE_OUT, "totalTokenCount": 18}
    return answer


def _gemini_events(model: str) -> list[tuple[str | None, Any]]:
    first = _gemini_answer(model, "Hello", usage=False)
    del first["candidates"][0]["finishReason"]  # only the last chunk of a real stream has one
    return [(None, first), (None, _gemini_answer(model, " from Gemini"))]


# --- tool use: each API's answer when the request offers tools (the first one is called) -----

TOOL_ARGUMENTS = {"city": "Paris"}


def _tool_name(tools: list[Any]) -> str:
    tool = tools[0]
    if "function" in tool:  # OpenAI
        return tool["function"]["name"]
    if "function_declarations" in tool or "functionDeclarations" in tool:  # Gemini
        return (tool.get("function_declarations") or tool.get("functionDeclarations"))[0]["name"]
    return tool["name"]  # Anthropic


def _openai_tool_call(model: str, tools: list[Any], arguments: dict[str, Any] = TOOL_ARGUMENTS) -> dict[str, Any]:
    answer = _openai_chat(model)
    answer["choices"][0] = {"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_fake", "type": "function",
                        "function": {"name": _tool_name(tools), "arguments": json.dumps(arguments)}}]}}
    return answer


def _openai_tool_events(
    model: str, tools: list[Any], tool_arguments: dict[str, Any] = TOOL_ARGUMENTS
) -> list[tuple[str | None, Any]]:
    arguments = json.dumps(tool_arguments)
    half = len(arguments) // 2

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    call = {"index": 0, "id": "call_fake", "type": "function", "function": {"name": _tool_name(tools), "arguments": ""}}
    return [
        (None, chunk({"role": "assistant", "content": None, "tool_calls": [call]})),
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]})),
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})),
        (None, chunk({}, "tool_calls")),
        (None, {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                "usage": {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": 18}}),
        (None, "[DONE]"),
    ]


def _anthropic_tool_use(model: str, tools: list[Any], arguments: dict[str, Any] = TOOL_ARGUMENTS) -> dict[str, Any]:
    return _anthropic_message(model) | {"stop_reason": "tool_use", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_fake", "name": _tool_name(tools), "input": arguments}]}


def _anthropic_tool_events(
    model: str, tools: list[Any], tool_arguments: dict[str, Any] = TOOL_ARGUMENTS
) -> list[tuple[str | None, Any]]:
    arguments = json.dumps(tool_arguments)
    half = len(arguments) // 2
    start = _anthropic_message(model) | {"content": [], "stop_reason": None,
                                         "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}
    tool = {"type": "tool_use", "id": "toolu_fake", "name": _tool_name(tools), "input": {}}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta",
         {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": tool}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": arguments[:half]}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": arguments[half:]}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": USAGE_OUT}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def _gemini_function_call(model: str, tools: list[Any]) -> dict[str, Any]:
    answer = _gemini_answer(model, "")
    answer["candidates"][0]["content"]["parts"] = [{"functionCall": {"name": _tool_name(tools), "args": TOOL_ARGUMENTS}}]
    return answer


def _gemini_tool_events(model: str, tools: list[Any]) -> list[tuple[str | None, Any]]:
    first = _gemini_answer(model, "Let me check.", usage=False)
    del first["candidates"][0]["finishReason"]
    return [(None, first), (None, _gemini_function_call(model, tools))]


# --- a tool-using model, as a coding agent (Claude Code) meets it ---------------------------

AGENT_TOOL = "Bash"
# The command the prompt asks for: the agent runs exactly that (a file the test then finds).
AGENT_COMMAND = re.compile(r"echo hi > [^\s\"'\\`]+")
AGENT_DONE = "Done: the file is written."
RECALL_BLOCK = re.compile(r"<memory-routing-recall>.*?</memory-routing-recall>", re.DOTALL)


def _with_call_id(answers: Any, suffix: str) -> Any:
    text = json.dumps(answers)
    return json.loads(text.replace('"toolu_fake"', f'"toolu_{suffix}"').replace('"call_fake"', f'"call_{suffix}"'))


def agent_turn(route: str, payload: dict[str, Any]) -> dict[str, Any] | str | None:
    """The model's next step in an agent loop: the Bash call the prompt names (arguments), the
    final text once a tool result came back, or None when the request is no such loop (a
    client's side call: a title, a summary)."""
    messages = payload.get("messages") or []
    offers_bash = any(
        AGENT_TOOL in (tool.get("name"), (tool.get("function") or {}).get("name"))
        for tool in payload.get("tools") or [] if isinstance(tool, dict)
    )
    if not offers_bash or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    content = last.get("content")
    if last.get("role") == "tool" or (
        isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    ):
        return AGENT_DONE
    # The newest prompt naming a command, as a model follows the latest instruction; never a
    # command quoted in a proxy's recall block (an earlier session's prompt).
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            prompt = RECALL_BLOCK.sub("", json.dumps(message.get("content")))
            if (command := AGENT_COMMAND.search(prompt)) is not None:
                return {"command": command.group(0), "description": "Write the file the prompt asks for"}
    return None


# --- what the real APIs refuse ----------------------------------------------------------------

# OpenAI's models without reasoning refuse reasoning_effort; these write at most 16384 tokens.
_OPENAI_NON_REASONING = frozenset({"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"})
_OPENAI_OUTPUT_CAPS = {"gpt-4o": 16384, "gpt-4o-mini": 16384, "gpt-4.1": 32768, "gpt-4.1-mini": 32768}

_OPENAI_CHAT_KEYS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
_ANTHROPIC_KEYS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature", "top_k",
    "top_p", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers", "context_management",
})
_GEMINI_KEYS = frozenset({
    "contents", "systemInstruction", "system_instruction", "tools", "toolConfig", "tool_config", "generationConfig",
    "generation_config", "safetySettings", "safety_settings", "cachedContent", "cached_content", "labels",
})
_ANTHROPIC_BLOCKS = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"})


def native_request_problem(route: str, headers: Any, payload: Any) -> str | None:
    """What the real API would refuse in this request, or None. Total: any JSON value gets an
    answer (a wrongly typed field is a refusal, as the real APIs' schema checks make it)."""
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    if route.endswith("/chat/completions"):
        return _openai_chat_problem(payload)
    if route == "/v1/messages":
        if not headers.get("anthropic-version"):
            return "anthropic-version: header is required"
        return _anthropic_problem(payload)
    if "/models/" in route:
        return _gemini_problem(payload)
    return None


def _list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _openai_chat_problem(payload: dict[str, Any]) -> str | None:
    if unknown := set(payload) - _OPENAI_CHAT_KEYS:
        return f"Unrecognized request argument supplied: {sorted(unknown)[0]}"
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        return "model: must be a string"
    if model in _OPENAI_NON_REASONING and "reasoning_effort" in payload:
        return "Unsupported parameter: 'reasoning_effort' is not supported with this model."
    for key in ("max_tokens", "max_completion_tokens"):
        cap, value = _OPENAI_OUTPUT_CAPS.get(model), payload.get(key)
        if cap is not None and isinstance(value, int) and value > cap:
            return (f"{key} is too large: {value}. This model supports at most {cap} completion tokens, "
                    f"whereas you provided {value}.")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    if problem := _openai_tool_pairing_problem(messages):
        return problem
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return f"messages[{i}].role: invalid value {role!r}"
        if unknown := set(message) - {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "audio",
                                      "function_call"}:
            return f"messages[{i}]: unknown parameter {sorted(unknown)[0]}"
        if role == "tool" and not message.get("tool_call_id"):
            return f"messages[{i}].tool_call_id: required for tool messages"
        for call in message.get("tool_calls") or []:
            function = call.get("function")
            if (call.get("type") != "function" or not call.get("id") or not isinstance(function, dict)
                    or not isinstance(function.get("arguments"), str)):
                return f"messages[{i}].tool_calls: invalid tool call {call!r}"
    tools = payload.get("tools") or []
    if not _list_of_objects(tools):
        return "tools: must be an array of objects"
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
            return f"tools[{i}]: must be a function tool with a name"
    return None


def _openai_tool_pairing_problem(messages: list[Any]) -> str | None:
    """Every tool call answered by a tool message right after it; no tool message without one."""
    open_calls: list[Any] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}]: must be an object"
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not _list_of_objects(tool_calls):
            return f"messages[{i}].tool_calls: must be an array of objects"
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in open_calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'.")
            open_calls.remove(message.get("tool_call_id"))
            continue
        if open_calls:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                    f"'tool_call_id'. The following tool_call_ids did not have response messages: "
                    f"{', '.join(map(str, open_calls))}")
        open_calls = [c.get("id") for c in tool_calls or []]
    return None


def _anthropic_problem(payload: dict[str, Any]) -> str | None:
    if unknown := set(payload) - _ANTHROPIC_KEYS:
        return f"{sorted(unknown)[0]}: Extra inputs are not permitted"
    if not isinstance(payload.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            kind = block.get("type") if isinstance(block, dict) else None
            if not isinstance(kind, str) or kind not in _ANTHROPIC_BLOCKS:
                return f"messages.{i}.content: unknown block type {kind!r}"
    if messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    tools = payload.get("tools") or []
    if not _list_of_objects(tools):
        return "tools: Input should be a valid list of objects"
    for i, tool in enumerate(tools):
        if not tool.get("name") or ("input_schema" not in tool and "type" not in tool):
            return f"tools.{i}: name and input_schema are required"
    return None


def _gemini_problem(payload: dict[str, Any]) -> str | None:
    if unknown := set(payload) - _GEMINI_KEYS:
        return f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.'
    contents = payload.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"contents[{i}]: must be an object"
        if content.get("role") not in ("user", "model", "function", None):
            return f"contents[{i}].role: please use a valid role: user, model"
        if not isinstance(content.get("parts"), list) or not content["parts"]:
            return f"contents[{i}].parts: must not be empty"
    return None


def _cache_counts(header: str) -> dict[str, int]:
    counts = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name in ("read", "write", "reasoning") and value.isdigit():
            counts[name] = int(value)
    return counts


def with_cache_usage(route: str, payload: Any, counts: dict[str, int]) -> Any:
    """``payload`` with the cache reads and writes and the reasoning tokens in its usage, as each
    API reports them: OpenAI's cached part inside prompt_tokens and reasoning inside
    completion_tokens; Anthropic's cache counts beside input_tokens (in message_start and whole
    messages, where input_tokens is); Gemini's cachedContentTokenCount inside promptTokenCount
    and thoughtsTokenCount beside candidatesTokenCount."""
    if not isinstance(payload, dict):
        return payload
    read, write, reasoning = counts.get("read", 0), counts.get("write", 0), counts.get("reasoning", 0)
    payload = json.loads(json.dumps(payload))
    message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
    for usage in (payload.get("usage"), message.get("usage")):
        if not isinstance(usage, dict):
            continue
        if "prompt_tokens" in usage:
            usage["prompt_tokens"] += read
            usage["prompt_tokens_details"] = {"cached_tokens": read}
            usage["completion_tokens"] = usage.get("completion_tokens", 0) + reasoning
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        elif route.endswith("/messages") and "input_tokens" in usage:
            usage["cache_read_input_tokens"] = read
            usage["cache_creation_input_tokens"] = write
    metadata = payload.get("usageMetadata")
    if isinstance(metadata, dict):
        metadata["promptTokenCount"] += read
        metadata["cachedContentTokenCount"] = read
        metadata["thoughtsTokenCount"] = reasoning
        metadata["totalTokenCount"] = metadata["promptTokenCount"] + metadata.get("candidatesTokenCount", 0) + reasoning
    return payload
