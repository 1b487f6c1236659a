"""Failures end to end: a real mitmdump between real SDKs and a fake upstream that misbehaves.

Every case asserts what the client sees: an error in its own protocol's shape (never
mitmproxy's HTML page), a broken stream where an answer was cut, or the upstream's own answer
where the upstream answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from fake_upstream import FAULT_HEADER, FakeUpstream
from harness import RunningProxy, free_port, run_mitmdump_to_exit, running_proxy, wait_until

pytestmark = pytest.mark.e2e

KEYS = {
    "MR_FAIL_OPENAI_KEY": "sk-fail-config-openai-0101",
    "MR_FAIL_ANTHROPIC_KEY": "sk-ant-fail-config-0102",
}
WAIT = 20
CONNECT_TIMEOUT = 1
READ_TIMEOUT = 2


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port that never accepts: a listening socket whose one-slot accept queue is kept full,
    so the kernel drops further SYNs and a connect attempt hangs (on loopback, no network)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    # Full once the kernel completed the handshake of the one connection its queue takes.
    select.select([], fillers, [], WAIT)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def failures_config(fake_url: str, refused_port: int, blackhole_port: int) -> dict:
    return {
        "model_list": [
            {"model_name": "gpt-alias", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_FAIL_OPENAI_KEY"}},
            {"model_name": "claude-alias", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_FAIL_ANTHROPIC_KEY"}},
            {"model_name": "refused-alias", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"http://127.0.0.1:{refused_port}/v1",
                "api_key": "os.environ/MR_FAIL_OPENAI_KEY"}},
            {"model_name": "refused-claude", "litellm_params": {
                "model": "anthropic/claude-haiku-4-5", "api_base": f"http://127.0.0.1:{refused_port}",
                "api_key": "os.environ/MR_FAIL_ANTHROPIC_KEY"}},
            {"model_name": "dns-alias", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": "http://no-such-host.invalid/v1",
                "api_key": "os.environ/MR_FAIL_OPENAI_KEY"}},
            {"model_name": "blackhole-alias", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"http://127.0.0.1:{blackhole_port}/v1",
                "api_key": "os.environ/MR_FAIL_OPENAI_KEY"}},
            {"model_name": "unset-key-alias", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_FAIL_NEVER_SET"}},
        ],
        "user_id_mappings": {"header_patterns": [
            {"header": "user-agent", "pattern": "^claude-cli", "user_id": "claude-code"}]},
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("failures")
    config = workdir / "config.yaml"
    with blackhole() as blackhole_port:
        config.write_text(yaml.safe_dump(failures_config(fake.url, free_port(), blackhole_port), sort_keys=False))
        env = KEYS
        args = [
            "--set", f"memory_routing_connect_timeout={CONNECT_TIMEOUT}",
            "--set", f"memory_routing_read_timeout={READ_TIMEOUT}",
            "--set", "memory_routing_max_body_size=1m",
            "--set", "memory_routing_max_header_size=16k",
        ]
        with running_proxy(workdir, config, env=env, extra_args=args) as running:
            yield running


def oai(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-client", max_retries=0, timeout=WAIT)


def claude(proxy: RunningProxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-client", max_retries=0, timeout=WAIT)


def chat(proxy: RunningProxy, model: str, fault: str | None = None, extra_headers: dict | None = None, **kwargs):
    headers = ({FAULT_HEADER: fault} if fault else {}) | (extra_headers or {})
    return oai(proxy).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=headers, **kwargs
    )


def status_error(call) -> openai.APIStatusError | anthropic.APIStatusError:
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as caught:
        call()
    return caught.value


def assert_openai_error(error, status: int) -> dict:
    assert error.status_code == status, error.response.text
    assert error.response.headers["content-type"] == "application/json"
    body = error.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "<html" not in error.response.text.lower()
    return body["error"]


def assert_anthropic_error(error, status: int) -> dict:
    assert error.status_code == status, error.response.text
    assert error.response.headers["content-type"] == "application/json"
    body = error.response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


# --- the proxy's own refusals -------------------------------------------------------------


def test_unknown_alias_is_404_listing_the_aliases(proxy: RunningProxy, upstream: FakeUpstream):
    error = assert_openai_error(status_error(lambda: chat(proxy, "no-such-model")), 404)
    assert "gpt-alias" in error["message"] and "claude-alias" in error["message"] and error["param"] == "model"
    assert not upstream.requests


def test_invalid_json_is_400_in_each_clients_shape(proxy: RunningProxy, upstream: FakeUpstream):
    openai_answer = httpx.post(f"{proxy.gateway_url}/v1/chat/completions", content=b'{"model": "gpt-alias",', timeout=WAIT)
    assert openai_answer.status_code == 400 and openai_answer.headers["x-should-retry"] == "false"
    assert "not valid JSON" in openai_answer.json()["error"]["message"]
    anthropic_answer = httpx.post(f"{proxy.gateway_url}/v1/messages", content=b"[1, 2", timeout=WAIT)
    assert anthropic_answer.status_code == 400
    assert anthropic_answer.json()["type"] == "error"
    assert anthropic_answer.json()["error"]["type"] == "invalid_request_error"
    assert not upstream.requests


def test_invalid_memory_user_id_is_400(proxy: RunningProxy, upstream: FakeUpstream):
    call = lambda: chat(proxy, "gpt-alias", extra_headers={"x-memory-user-id": "no spaces/allowed"})  # noqa: E731
    error = assert_openai_error(status_error(call), 400)
    assert "x-memory-user-id" in error["message"] and "no spaces" not in error["message"]
    assert not upstream.requests


def test_unset_key_variable_is_500_naming_the_variable(proxy: RunningProxy, upstream: FakeUpstream):
    error = assert_openai_error(status_error(lambda: chat(proxy, "unset-key-alias")), 500)
    assert "MR_FAIL_NEVER_SET" in error["message"]
    assert not upstream.requests


def test_config_value_with_a_line_break_never_reaches_a_header(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/gpt-4o", "extra_headers": {"x-team": "os.environ/MR_FAIL_SPLIT_HEADER"}}}]}))
    result = run_mitmdump_to_exit(
        tmp_path, ["--listen-host", "127.0.0.1", "--set", f"memory_routing_config={config}"],
        env={"MR_FAIL_SPLIT_HEADER": "team-a\r\nx-injected: yes"},
    )
    assert result.returncode != 0
    assert "model_list[0].litellm_params.extra_headers.x-team: contains a line break" in result.stdout + result.stderr
    assert "team-a" not in result.stdout + result.stderr


def test_body_over_the_limit_is_413_announced_or_chunked(proxy: RunningProxy, upstream: FakeUpstream):
    big = json.dumps({"model": "gpt-alias", "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}).encode()
    announced = httpx.post(f"{proxy.gateway_url}/v1/chat/completions", content=big, timeout=WAIT)
    assert announced.status_code == 413 and announced.headers["x-should-retry"] == "false"
    assert "memory_routing_max_body_size" in announced.json()["error"]["message"]
    chunked = httpx.post(
        f"{proxy.gateway_url}/v1/messages", content=iter([big[:500_000], big[500_000:]]), timeout=WAIT,
        headers={"anthropic-version": "2023-06-01"},
    )
    assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "request_too_large"
    assert not upstream.requests


def rss_bytes(proxy: RunningProxy) -> int:
    with open(f"/proc/{proxy.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """Status line + headers, and the body (by Content-Length), bounded by the socket timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


@pytest.mark.parametrize("expect_continue", [True, False], ids=["expect-100-continue", "no-expect"])
def test_announced_500_mb_body_is_refused_from_the_headers_alone(
    proxy: RunningProxy, upstream: FakeUpstream, expect_continue: bool
):
    before = rss_bytes(proxy)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {500 * 1024 * 1024}\r\n" + ("expect: 100-continue\r\n" if expect_continue else "") + "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.gateway_port), timeout=WAIT) as sock:
        sock.sendall(head)  # and not one byte of the body
        status, body = read_answer(sock)
    assert status.startswith(b"HTTP/1.1 413"), status  # not "100 Continue"
    error = json.loads(body)["error"]  # the OpenAI client's shape
    assert "memory_routing_max_body_size" in error["message"] and "500" in error["message"], error
    assert "1.0m" in error["message"] or "1m" in error["message"], error
    assert b"x-should-retry: false" in status.lower()
    assert rss_bytes(proxy) - before < 64 * 1024 * 1024
    assert not upstream.requests


def test_chunked_body_stops_being_read_at_the_limit(proxy: RunningProxy, upstream: FakeUpstream):
    import select

    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", proxy.gateway_port), timeout=WAIT) as sock:
        sock.sendall(head)
        # Never the final chunk: only a proxy that stops reading at the limit answers at all.
        # mitmproxy's body_size_limit is kept at >= 64 MiB (it also caps answers).
        while sent < 256 * 1024 * 1024:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(piece)
        status, body = read_answer(sock)
    assert status.startswith(b"HTTP/1.1 413"), status
    assert json.loads(body)["error"]["type"] == "request_too_large"  # Anthropic's shape
    assert sent < 256 * 1024 * 1024
    assert not upstream.requests


@pytest.mark.parametrize("value", [b"a\rx-sm-user-id: victim", b"a\x00b"], ids=["bare-cr", "nul"])
def test_control_characters_in_a_header_value_are_refused_never_forwarded(
    proxy: RunningProxy, upstream: FakeUpstream, value: bytes
):
    body = json.dumps({"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"x-test: " + value + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", proxy.gateway_port), timeout=WAIT) as sock:
        sock.sendall(request)
        status, answer = read_answer(sock)
    assert status.startswith(b"HTTP/1.1 400"), status
    assert "'x-test' contains a control character" in json.loads(answer)["error"]["message"]
    # Nothing reached the upstream (a well-formed call in the same connection state would).
    assert not upstream.requests
    ok = httpx.post(f"{proxy.gateway_url}/v1/chat/completions", content=body, timeout=WAIT,
                    headers={"content-type": "application/json", "x-test": "a"})
    assert ok.status_code == 200, ok.text
    assert len(upstream.requests) == 1


def test_headers_over_the_limit_are_431(proxy: RunningProxy, upstream: FakeUpstream):
    answer = httpx.post(
        f"{proxy.gateway_url}/v1/chat/completions", json={"model": "gpt-alias", "messages": []},
        headers={f"x-filler-{i}": "v" * 1000 for i in range(20)}, timeout=WAIT,
    )
    assert answer.status_code == 431 and "memory_routing_max_header_size" in answer.json()["error"]["message"]
    assert not upstream.requests


def test_over_long_user_agent_is_classified_on_its_prefix(proxy: RunningProxy, upstream: FakeUpstream):
    chat(proxy, "gpt-alias", extra_headers={"user-agent": "claude-cli/2.1.0 " + "z" * 12000})
    assert upstream.last().headers["x-sm-user-id"] == "claude-code"


# --- upstream failures --------------------------------------------------------------------


def test_connection_refused_is_502_in_openai_and_anthropic_shape(proxy: RunningProxy, upstream: FakeUpstream):
    error = assert_openai_error(status_error(lambda: chat(proxy, "refused-alias")), 502)
    assert "127.0.0.1" in error["message"]
    call = lambda: claude(proxy).messages.create(  # noqa: E731
        model="refused-claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert_anthropic_error(status_error(call), 502)
    assert "could not get an answer from 127.0.0.1" in proxy.log()


def test_dns_failure_is_502(proxy: RunningProxy, upstream: FakeUpstream):
    error = assert_openai_error(status_error(lambda: chat(proxy, "dns-alias")), 502)
    assert "no-such-host.invalid" in error["message"]


# The two timeout tests wait for the timeout's effect, the 504, bounded by the client's own
# timeout (WAIT): a proxy whose timer never fired would leave the call to the OS (a blackholed
# connect retries for minutes) or to the fake's gate (60 s), and the SDK would raise its timeout
# instead. How soon after the timeout the answer comes is the machine's business, not asserted;
# that it never comes before the timeout is (one-sided: a slow machine cannot fail it).
def test_connect_timeout_is_504_and_bounded(proxy: RunningProxy, upstream: FakeUpstream):
    started = time.monotonic()
    error = assert_openai_error(status_error(lambda: chat(proxy, "blackhole-alias")), 504)
    assert f"did not accept a connection within {CONNECT_TIMEOUT} s (memory_routing_connect_timeout)" in error["message"]
    assert time.monotonic() - started >= CONNECT_TIMEOUT


def test_upstream_that_never_answers_is_504_after_the_read_timeout(proxy: RunningProxy, upstream: FakeUpstream):
    started = time.monotonic()
    try:
        error = assert_openai_error(status_error(lambda: chat(proxy, "gpt-alias", fault="hang")), 504)
    finally:
        upstream.release()
    assert f"sent nothing for {READ_TIMEOUT} s (memory_routing_read_timeout)" in error["message"]
    assert time.monotonic() - started >= READ_TIMEOUT


def routed_lines(proxy: RunningProxy) -> list[dict]:
    prefix = "memory-routing: routed "
    return [json.loads(line.split(prefix, 1)[1]) for line in proxy.log().splitlines() if prefix in line]


def test_read_timeout_is_logged_as_a_timeout_and_a_stream_as_a_stream(proxy: RunningProxy, upstream: FakeUpstream):
    before = len(routed_lines(proxy))
    try:
        assert_openai_error(status_error(lambda: chat(proxy, "gpt-alias", fault="hang", stream=True)), 504)
    finally:
        upstream.release()
    assert wait_until(lambda: len(routed_lines(proxy)) > before)
    line = routed_lines(proxy)[-1]
    assert line["error"].startswith("read timeout: 127.0.0.1 sent nothing for"), line
    assert "server closed connection" not in line["error"]
    assert line["stream"] is True and line["status"] is None


@pytest.mark.parametrize("status", [500, 529])
def test_upstream_errors_pass_through_unchanged(proxy: RunningProxy, upstream: FakeUpstream, status: int):
    call = lambda: claude(proxy).messages.create(  # noqa: E731
        model="claude-alias", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
        extra_headers={FAULT_HEADER: f"status={status}"},
    )
    error = assert_anthropic_error(status_error(call), status)
    assert error == {"type": "overloaded_error" if status == 529 else "api_error", "message": f"fake {status}"}
    assert "x-should-retry" not in error_headers(call)


def error_headers(call) -> httpx.Headers:
    with pytest.raises(anthropic.APIStatusError) as caught:
        call()
    return caught.value.response.headers


def test_stream_cut_mid_way_reaches_the_client_broken_and_is_logged(proxy: RunningProxy, upstream: FakeUpstream):
    received: list[str] = []
    # The SDKs surface it as their HTTP library's protocol error (incomplete chunked read).
    with pytest.raises(Exception, match="incomplete chunked read"):
        for chunk in chat(proxy, "gpt-alias", fault="cut", stream=True):
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert received  # the first events arrived before the cut
    assert wait_until(lambda: "was cut short" in proxy.log())

    with pytest.raises(Exception, match="incomplete chunked read"):
        with claude(proxy).messages.stream(
            model="claude-alias", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
            extra_headers={FAULT_HEADER: "cut"},
        ) as stream:
            stream.get_final_message()


def test_buffered_answer_cut_mid_way_is_a_502_not_half_a_body(proxy: RunningProxy, upstream: FakeUpstream):
    assert_openai_error(status_error(lambda: chat(proxy, "gpt-alias", fault="cut")), 502)


def test_stream_passes_event_by_event(proxy: RunningProxy, upstream: FakeUpstream):
    chunks, text = 0, ""
    for chunk in chat(proxy, "gpt-alias", fault="lockstep", stream=True):
        chunks += 1
        text += "".join(choice.delta.content or "" for choice in chunk.choices)
        # The upstream sends its next event only now: a proxy that held events back until the
        # end would never hand this one over, and the client's read timeout would fail the test.
        upstream.allow_event()
    assert text == "Hello" and chunks == 4


def test_huge_answer_passes_whole(proxy: RunningProxy, upstream: FakeUpstream):
    answer = httpx.post(
        f"{proxy.gateway_url}/v1/chat/completions", json={"model": "gpt-alias", "messages": []},
        headers={FAULT_HEADER: "huge"}, timeout=WAIT,
    )
    assert answer.status_code == 200
    assert len(answer.json()["filler"]) == 8 * 1024 * 1024


def proxy_holds_connection(proxy: RunningProxy, local_port: int, remote_port: int) -> bool:
    """Whether the proxy process still has a descriptor for its TCP socket from ``local_port`` to
    ``remote_port`` (on loopback): its end of one particular connection."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    inodes.add(f"socket:[{inode}]")
    fd_dir = f"/proc/{proxy.process.pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}") in inodes:
                return True
    return False


def test_client_disconnect_mid_stream_drops_the_upstream_stream(proxy: RunningProxy, upstream: FakeUpstream):
    # Followed by its own connection, not by counts of descriptors or connections: the module's
    # proxy and fake are shared, and connections of earlier tests (SDK clients collected by the
    # garbage collector at any moment, answers still closing on a loaded machine) may close
    # while this test runs.
    upstream.hold_streams = True
    try:
        with socket.create_connection(("127.0.0.1", proxy.gateway_port), timeout=WAIT) as client:
            body = json.dumps({"model": "gpt-alias", "stream": True, "messages": []}).encode()
            client.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            first = client.recv(65536)
            assert b"200" in first.split(b"\r\n", 1)[0]
            held = upstream.last().connection  # the stream, held by the fake after its first event
            proxy_port = upstream.open_connection_ports[held]
            fake_port = upstream.server.server_port
            assert proxy_holds_connection(proxy, proxy_port, fake_port)
        # The client is gone: the proxy must close its upstream connection, not keep it open.
        assert wait_until(lambda: not proxy_holds_connection(proxy, proxy_port, fake_port), timeout=10)
        # Released, the fake writes the rest into the closed connection and its handler ends.
        upstream.release()
        assert wait_until(lambda: held not in upstream.open_connection_ports, timeout=10)
    finally:
        upstream.release()


def test_forward_proxy_client_gets_json_not_mitmproxys_page(proxy: RunningProxy, upstream: FakeUpstream):
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.forward_url, verify=trust, timeout=WAIT) as client:
        answer = client.post(
            "https://api.openai.com/v1/chat/completions", json={"model": "refused-alias", "messages": []},
            headers={"authorization": "Bearer sk-client"},
        )
    assert answer.status_code == 502 and answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["type"] == "server_error"


def test_http2_client_gets_a_json_body(proxy: RunningProxy, upstream: FakeUpstream):
    result = subprocess.run(
        ["curl", "-sS", "--http2", "-x", proxy.forward_url, "--cacert", str(proxy.ca_cert),
         "-H", "content-type: application/json", "--data", '{"model": "refused-alias", "messages": []}',
         "-w", "\n%{http_code} %{http_version}", "https://api.openai.com/v1/chat/completions"],
        capture_output=True, text=True, timeout=WAIT,
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == "502 2", result
    assert json.loads(body)["error"]["type"] == "server_error"


def test_failures_are_logged_without_secrets(proxy: RunningProxy, upstream: FakeUpstream):
    chat(proxy, "gpt-alias")
    with contextlib.suppress(openai.APIStatusError):
        chat(proxy, "refused-alias")
    log = proxy.log()
    for secret in [*KEYS.values(), "sk-client", "team-a"]:
        assert secret not in log


def test_blackhole_port_makes_connect_attempts_hang() -> None:
    """Guards the fixture: without this the connect-timeout test would prove nothing."""
    with blackhole() as port:
        probe = socket.socket()
        probe.settimeout(0.5)
        with pytest.raises((TimeoutError, socket.timeout)):
            probe.connect(("127.0.0.1", port))
        probe.close()
