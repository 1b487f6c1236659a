"""Benchmark: direct vs bare mitmdump vs mitmdump with the addon, in one run.

Part 1, per process, in alternating rounds (addon, bare, addon, bare, ...; a fresh mitmdump each
time): seconds from spawning mitmdump to the first ``GET /health`` answered (addon) or the first
request answered (bare); idle resident memory after start-up and after the load; the proxy's CPU
time (user + system, from /proc) per request over a measured batch of plain requests and of
streams, start-up and warm-up excluded. Capacity = bare CPU/request / addon CPU/request, the
median of the per-round ratios. Also how many of our addon objects each mitmproxy event visits.

Part 2, against one long-lived process each: non-streaming requests/s and p50/p99 latency at
1 and 10 concurrent keep-alive clients, streaming time to first event, and (with valgrind)
callgrind instruction counts. Everything runs on loopback against a local upstream; every loop is
bounded by a request count or a deadline.

    make bench            # or: .venv/bin/python bench/bench.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).with_name("mitmdump")
START_TIMEOUT = 90.0
CALLGRIND_START_TIMEOUT = 600.0  # importing LiteLLM under valgrind takes a while
IO_TIMEOUT = 120.0  # under valgrind on a busy 2-core machine one answer can take a while
HOOK_CENSUS = Path(__file__).resolve().parent / "hook_census.py"
# Targets from the issues, checked here rather than in timed tests.
TARGET_CAPACITY = 0.90
TARGET_STARTUP_S = 3.0
TARGET_RSS_MIB = 250.0

CHAT_BODY = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hello " * 50}]}).encode()
STREAM_BODY = json.dumps({"model": "bench-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
# The same stream asked for by an Anthropic-format client (Claude Code): the addon translates
# it to chat/completions for the OpenAI-format upstream and the events back.
TRANSLATED_STREAM = ("/v1/messages", json.dumps({
    "model": "bench-model", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}],
}).encode())
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 40}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100},
}).encode()
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
LAST_EVENTS = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
STREAM_EVENTS = 20
STREAM_EVENT_GAP = 0.005


# --- upstream (its own process) ------------------------------------------------------------


async def _serve_upstream(port_out) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if b'"stream": true' in body or b'"stream":true' in body:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    for _ in range(STREAM_EVENTS):
                        writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
                        await writer.drain()
                        await asyncio.sleep(STREAM_EVENT_GAP)
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(LAST_EVENTS), LAST_EVENTS))
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(ANSWER), ANSWER))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_out.send(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _upstream_main(port_out) -> None:
    asyncio.run(_serve_upstream(port_out))


def start_upstream() -> tuple[multiprocessing.Process, int]:
    """The local upstream in a process of its own (terminate it when done); returns it and its port."""
    receive, send = multiprocessing.Pipe(duplex=False)
    upstream = multiprocessing.Process(target=_upstream_main, args=(send,), daemon=True)
    upstream.start()
    if not receive.poll(30):
        raise RuntimeError("upstream did not start")
    return upstream, receive.recv()


# --- client ----------------------------------------------------------------------------------


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> tuple[int, float]:
        """Send one request; return (status, seconds until the first body byte) after reading it all."""
        started = time.perf_counter()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: bench\r\nuser-agent: OpenAI/Python bench\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-bench\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        status = int(head.split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        first_byte = None
        if b"content-length" in headers:
            await asyncio.wait_for(self.reader.readexactly(int(headers[b"content-length"])), IO_TIMEOUT)
            first_byte = time.perf_counter()
        else:  # chunked
            while True:
                size = int((await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)).strip(), 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), IO_TIMEOUT)
                if first_byte is None and size:
                    first_byte = time.perf_counter()
                if size == 0:
                    break
                del chunk
        return status, (first_byte or time.perf_counter()) - started

    def close(self) -> None:
        self.writer.close()


@dataclass
class Throughput:
    rps: float
    p50_ms: float
    p99_ms: float


async def measure_throughput(port: int, concurrency: int, total: int) -> Throughput:
    latencies: list[float] = []
    per_client = total // concurrency

    async def client() -> None:
        conn = await Connection.open(port)
        try:
            for _ in range(per_client):
                started = time.perf_counter()
                status, _ = await conn.post("/v1/chat/completions", CHAT_BODY)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                latencies.append(time.perf_counter() - started)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Throughput(len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000,
                      latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000)


async def measure_ttfb(
    port: int, rounds: int, fresh: bool, body: bytes = STREAM_BODY, path: str = "/v1/chat/completions"
) -> float:
    """Median seconds from sending a request to the first body byte.

    ``fresh``: a new client connection per request (the proxy must also dial upstream);
    otherwise one kept-alive connection, as SDK connection pools do, after a warm-up request.
    """
    samples = []
    kept = None if fresh else await Connection.open(port)
    try:
        for _ in range(rounds + 1):
            conn = kept if kept is not None else await Connection.open(port)
            try:
                status, ttfb = await conn.post(path, body)
            finally:
                if kept is None:
                    conn.close()
            if status != 200:
                raise RuntimeError(f"status {status}")
            samples.append(ttfb)
    finally:
        if kept is not None:
            kept.close()
    return statistics.median(samples[1:])


# --- proxies ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mitmdump exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"mitmdump did not start:\n{log.read_text()}")


def spawn_mitmdump(
    workdir: Path, name: str, upstream_port: int, with_addon: bool,
    wrapper: list[str] | None = None, scripts: tuple[Path, ...] = (), env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (), config_extra: str = "",
) -> tuple[subprocess.Popen, int, Path]:
    """Start mitmdump without waiting for it; returns (process, listening port, log file).
    ``config_extra``: more top-level sections of the addon's config (YAML), e.g. ``storage``."""
    port = free_port()
    log = workdir / f"{name}.log"
    args = [*(wrapper or []), sys.executable, str(MITMDUMP), "--set", f"confdir={workdir / 'confdir'}", "--listen-host",
            "127.0.0.1",
            "--set", "connection_strategy=lazy", *extra_args]
    for script in scripts:
        args += ["-s", str(script)]
    if with_addon:
        config = workdir / "config.yaml"
        config.write_text(
            "model_list:\n  - model_name: bench-model\n    litellm_params:\n"
            f"      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:{upstream_port}/v1\n"
            "      api_key: sk-bench-config\n"
            "user_id_mappings:\n  header_patterns:\n    - {pattern: '^(Async)?OpenAI/Python ', user_id: openai-python}\n"
            + config_extra
        )
        args += ["-s", str(ROOT / "addon.py"), "--set", f"memory_routing_config={config}",
                 "--mode", f"reverse:http://memory-routing.localhost@{port}"]
    else:
        args += ["--mode", f"reverse:http://127.0.0.1:{upstream_port}@{port}"]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=os.environ | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"} | (env or {}))
    return process, port, log


def start_mitmdump(
    workdir: Path, name: str, upstream_port: int, with_addon: bool,
    wrapper: list[str] | None = None, start_timeout: float = START_TIMEOUT,
) -> tuple[subprocess.Popen, int]:
    process, port, log = spawn_mitmdump(workdir, name, upstream_port, with_addon, wrapper)
    wait_listening(port, process, log, start_timeout)
    return process, port


def instructions_per_request(workdir: Path, upstream_port: int, with_addon: bool, requests: int) -> float:
    """Instructions mitmdump executes per request, counted by callgrind (deterministic, unlike
    wall-clock or CPU time on a shared VM). Instrumentation is off during start-up and warm-up."""
    name = "cg-addon" if with_addon else "cg-bare"
    out = workdir / f"{name}.callgrind"
    process, port = start_mitmdump(
        workdir, name, upstream_port, with_addon,
        wrapper=["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"],
        start_timeout=CALLGRIND_START_TIMEOUT,
    )
    try:
        asyncio.run(run_batch(port, CHAT_BODY, 1, 20))  # warm-up, uninstrumented
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True, timeout=60)
        asyncio.run(run_batch(port, CHAT_BODY, 1, requests))
        subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True, timeout=120)
    finally:
        stop(process)
    totals = 0
    for dump in workdir.glob(f"{name}.callgrind*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                totals = max(totals, int(line.split()[1]))
    return totals / requests


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process so far (from /proc, in clock ticks); with ``thread``,
    of that thread only (the main thread's id is the process id)."""
    stat = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)


# --- per-process rounds: start-up, CPU time per request, idle memory ---------------------------


def request_status(port: int, method: str, path: str, body: bytes, timeout: float) -> int | None:
    """Status of one request on a new connection, or None while nothing answers yet."""
    head = (f"{method} {path} HTTP/1.1\r\nhost: bench\r\nuser-agent: OpenAI/Python bench\r\n"
            f"authorization: Bearer sk-bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(head + body)
            received = b""
            while b"\r\n" not in received and len(received) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                received += chunk
    except OSError:
        return None
    try:
        return int(received.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def wait_answered(port: int, process: subprocess.Popen, log: Path, method: str, path: str, body: bytes,
                  deadline: float) -> float:
    """The monotonic time at which ``method path`` is first answered 200, polling until ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        if process.poll() is not None:
            raise RuntimeError(f"mitmdump exited:\n{log.read_text(errors='replace')}")
        if request_status(port, method, path, body, timeout=left) == 200:
            return time.monotonic()
        time.sleep(0.01)  # polling interval while the port is not open yet
    raise RuntimeError(f"no 200 for {method} {path} within {START_TIMEOUT:.0f} s:\n{log.read_text(errors='replace')}")


def idle_rss_mib(pid: int, window: float = 0.5, timeout: float = 20.0) -> float:
    """Resident memory once the process is idle: its CPU time advanced by at most two clock
    ticks over ``window`` seconds (threads finishing imports or collecting are not idle).
    Bounded by ``timeout``: a process that never settles is measured then."""
    deadline = time.monotonic() + timeout
    tick = 1 / os.sysconf("SC_CLK_TCK")
    previous = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        current = cpu_seconds(pid)
        if current - previous <= 2 * tick:
            break
        previous = current
    return rss_mib(pid)


async def run_batch(port: int, body: bytes, concurrency: int, total: int) -> int:
    """``total`` requests over ``concurrency`` keep-alive connections; returns how many were sent."""
    per_client = max(1, total // concurrency)

    async def client() -> None:
        conn = await Connection.open(port)
        try:
            for _ in range(per_client):
                status, _ = await conn.post("/v1/chat/completions", body)
                if status != 200:
                    raise RuntimeError(f"status {status}")
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return per_client * concurrency


def cpu_us_per_request(pid: int, port: int, body: bytes, concurrency: int, total: int) -> tuple[float, float]:
    """The process's user + system CPU time per request over a measured batch, after a warm-up
    batch (first-use imports, caches and connection set-up stay out of the figure); and the part
    of it spent by the main thread, which runs mitmproxy's event loop and every hook (the
    rest is other threads: the addon's memory and usage writers, recall, mitmproxy's own)."""
    asyncio.run(run_batch(port, body, concurrency, max(concurrency, total // 4)))
    before, loop_before = cpu_seconds(pid), cpu_seconds(pid, thread=pid)
    sent = asyncio.run(run_batch(port, body, concurrency, total))
    return (cpu_seconds(pid) - before) / sent * 1e6, (cpu_seconds(pid, thread=pid) - loop_before) / sent * 1e6


@dataclass
class ProcessRound:
    startup_s: float  # spawn to the first GET /health answered (addon) / first request answered (bare)
    first_call_s: float  # spawn to the first model call answered
    rss_started_mib: float  # idle, right after start-up
    cpu_us_plain: float
    cpu_us_stream: float
    cpu_us_plain_loop: float  # of which the main (event-loop) thread
    cpu_us_stream_loop: float
    rss_loaded_mib: float  # idle, after the batches


FLOOR_ADDON = Path(__file__).resolve().parent / "floor_addon.py"
# (name, with the addon, extra mitmdump arguments, scripts), alternating within each round. The
# floor is bare mitmdump with the least a routing addon does per call (floor_addon.py).
PROCESS_KINDS: tuple[tuple[str, bool, tuple[str, ...], tuple[Path, ...]], ...] = (
    ("addon", True, (), ()),
    ("mitmdump", False, (), ()),
    ("mitmdump-streaming", False, ("--set", "stream_large_bodies=1"), ()),
    ("floor", False, (), (FLOOR_ADDON,)),
)


def process_round(workdir: Path, upstream_port: int, with_addon: bool, index: int, concurrency: int,
                  plain_requests: int, stream_requests: int, extra_args: tuple[str, ...] = (),
                  kind: str = "", scripts: tuple[Path, ...] = (), config_extra: str = "",
                  env: dict[str, str] | None = None, until_ready: Callable[[int], None] | None = None) -> ProcessRound:
    """One fresh process: start-up, idle RSS, CPU per request. ``until_ready(port)``, when given,
    waits (bounded) after the first call until the process is ready to be measured (its shared
    servers connected, say); the start-up figures do not include that wait."""
    name = f"{kind or ('addon' if with_addon else 'mitmdump')}-round{index}"
    spawned = time.monotonic()
    process, port, log = spawn_mitmdump(workdir, name, upstream_port, with_addon, extra_args=extra_args,
                                        scripts=scripts, env={"BENCH_FLOOR_DIR": str(workdir), **(env or {})},
                                        config_extra=config_extra)
    try:
        deadline = spawned + START_TIMEOUT
        health = wait_answered(port, process, log, "GET", "/health", b"", deadline) if with_addon else None
        first_call = wait_answered(port, process, log, "POST", "/v1/chat/completions", CHAT_BODY, deadline)
        if until_ready is not None:
            until_ready(port)
        rss_started = idle_rss_mib(process.pid)
        plain, plain_loop = cpu_us_per_request(process.pid, port, CHAT_BODY, concurrency, plain_requests)
        stream, stream_loop = cpu_us_per_request(process.pid, port, STREAM_BODY, concurrency, stream_requests)
        rss_loaded = idle_rss_mib(process.pid)
    finally:
        stop(process)
    return ProcessRound((health or first_call) - spawned, first_call - spawned, rss_started, plain, stream,
                        plain_loop, stream_loop, rss_loaded)


def hook_census(workdir: Path, upstream_port: int, with_addon: bool) -> dict:
    """Per mitmproxy event: addon objects walked, handlers called, and ours among them."""
    name = "census-addon" if with_addon else "census-bare"
    out = workdir / f"{name}.json"
    spawned = time.monotonic()
    process, port, log = spawn_mitmdump(workdir, name, upstream_port, with_addon, scripts=(HOOK_CENSUS,),
                                        env={"BENCH_HOOK_CENSUS": str(out)})
    try:
        wait_answered(port, process, log, "POST", "/v1/chat/completions", CHAT_BODY, spawned + START_TIMEOUT)
    finally:
        stop(process)
    return json.loads(out.read_text())


# Events mitmproxy dispatches for one request on a kept-alive connection; each flow event is
# followed by an "update" event (AddonManager.handle_lifecycle).
REQUEST_EVENTS = ("requestheaders", "request", "responseheaders", "response")
CONNECTION_EVENTS = ("client_connected", "server_connect", "server_connected", "server_disconnected", "client_disconnected")


def dispatch_per_request(census: dict) -> tuple[int, int, int]:
    """(objects walked, handlers called, our handlers called) for one kept-alive request."""
    events = census["events"]
    names = [e for name in REQUEST_EVENTS for e in (name, "update")]
    return (sum(events[e]["walked"] for e in names), sum(events[e]["handlers"] for e in names),
            sum(len(events[e]["ours"]) for e in names))


# --- report ----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller batches, one steady-state round, no callgrind (about three minutes)")
    parser.add_argument("--process-rounds", type=int, default=5,
                        help="alternating rounds of a fresh addon and bare mitmdump (>= 5 for the figures)")
    parser.add_argument("--concurrency", type=int, default=10, help="clients in the CPU batches")
    parser.add_argument("--cpu-requests", type=int, default=1200, help="plain requests per measured CPU batch")
    parser.add_argument("--stream-requests", type=int, default=250, help="streams per measured CPU batch")
    parser.add_argument("--requests", type=int, default=1000, help="requests per throughput measurement")
    parser.add_argument("--ttfb-rounds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="steady-state rounds over direct, mitmdump, addon")
    parser.add_argument("--instruction-requests", type=int, default=200,
                        help="requests counted under callgrind (0 to skip; needs valgrind)")
    parser.add_argument("--json", type=Path, help="also write every sample and figure here")
    args = parser.parse_args()
    if args.quick:
        args.cpu_requests, args.stream_requests = min(args.cpu_requests, 600), min(args.stream_requests, 120)
        args.requests, args.ttfb_rounds, args.rounds = min(args.requests, 300), min(args.ttfb_rounds, 10), 1
        args.instruction_requests = 0
    started = time.monotonic()

    upstream, upstream_port = start_upstream()

    rounds: dict[str, list[ProcessRound]] = {name: [] for name, _, _, _ in PROCESS_KINDS}
    samples: dict[str, dict[str, list[float]]] = {}
    census: dict[str, dict] = {}
    instructions: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            # Part 1. A fresh process per round, addon and bare alternating, so that machine
            # noise (a shared 2-core VM) hits both alike; ratios are taken within a round.
            for index in range(args.process_rounds):
                for name, with_addon, extra_args, scripts in PROCESS_KINDS:
                    rounds[name].append(process_round(workdir, upstream_port, with_addon, index, args.concurrency,
                                                      args.cpu_requests, args.stream_requests, extra_args, name, scripts))
                    print(f"round {index + 1}/{args.process_rounds} {name}: {rounds[name][-1]}", file=sys.stderr)
            for name, with_addon in (("mitmdump", False), ("addon", True)):
                census[name] = hook_census(workdir, upstream_port, with_addon)

            # Part 2. Steady state of one long-lived process each, against the upstream itself.
            targets: list[tuple[str, subprocess.Popen | None, int]] = [("direct", None, upstream_port)]
            try:
                for name, with_addon in (("mitmdump", False), ("addon", True)):
                    process, port = start_mitmdump(workdir, f"steady-{name}", upstream_port, with_addon)
                    targets.append((name, process, port))
                for _, _, port in targets:  # first-use costs (imports, caches, allocator) out of the way
                    asyncio.run(run_batch(port, CHAT_BODY, 10, args.requests))
                for _ in range(args.rounds):
                    for name, _, port in targets:
                        row = samples.setdefault(name, {})
                        for concurrency in (1, 10):
                            result = asyncio.run(measure_throughput(port, concurrency, args.requests))
                            row.setdefault(f"rps_c{concurrency}", []).append(result.rps)
                            row.setdefault(f"p50_c{concurrency}", []).append(result.p50_ms)
                            row.setdefault(f"p99_c{concurrency}", []).append(result.p99_ms)
                        row.setdefault("ttfb_keepalive_ms", []).append(
                            asyncio.run(measure_ttfb(port, args.ttfb_rounds, fresh=False)) * 1000)
                        row.setdefault("ttfb_fresh_ms", []).append(
                            asyncio.run(measure_ttfb(port, args.ttfb_rounds, fresh=True)) * 1000)
                        row.setdefault("json_fresh_ms", []).append(
                            asyncio.run(measure_ttfb(port, args.ttfb_rounds, fresh=True, body=CHAT_BODY)) * 1000)
                        translated = float("nan")
                        if name == "addon":
                            path, body = TRANSLATED_STREAM
                            translated = asyncio.run(measure_ttfb(port, args.ttfb_rounds, fresh=False, body=body,
                                                                  path=path)) * 1000
                        row.setdefault("ttfb_translated_ms", []).append(translated)
            finally:
                for _, running, _ in targets:
                    if running:
                        stop(running)
            if args.instruction_requests and shutil.which("valgrind"):
                for name, with_addon in (("mitmdump", False), ("addon", True)):
                    instructions[name] = instructions_per_request(workdir, upstream_port, with_addon, args.instruction_requests)
    finally:
        upstream.terminate()
        upstream.join(15)

    results = {name: {key: median(values) for key, values in row.items()} for name, row in samples.items()}
    for name in ("addon", "mitmdump"):
        for key in ProcessRound.__dataclass_fields__:
            results[name][key] = median([getattr(r, key) for r in rounds[name]])
        results[name]["instructions_k"] = instructions.get(name, float("nan")) / 1000
    # Capacity within each round (the addon and bare ran back to back), then the median.
    ratios = {
        kind: [b.__dict__[f"cpu_us_{kind}"] / a.__dict__[f"cpu_us_{kind}"]
               for a, b in zip(rounds["addon"], rounds["mitmdump"], strict=True)]
        for kind in ("plain", "stream", "plain_loop", "stream_loop")
    }
    # Streams against mitmdump streaming too: bare mitmdump buffers a whole answer and sends it
    # once, the addon streams it event by event (as it must); with stream_large_bodies=1 mitmdump
    # pays its own per-chunk path, so the ratio shows the addon's cost over streaming itself.
    ratios["stream_vs_streaming"] = [b.cpu_us_stream / a.cpu_us_stream
                                     for a, b in zip(rounds["addon"], rounds["mitmdump-streaming"], strict=True)]
    # The floor: bare mitmdump against itself running the least a routing addon does per call.
    ratios["floor_plain"] = [b.cpu_us_plain / f.cpu_us_plain for f, b in zip(rounds["floor"], rounds["mitmdump"], strict=True)]
    summary = {f"capacity_{kind}": median(values) for kind, values in ratios.items()}
    summary["stream_streaming_us"] = median([r.cpu_us_stream for r in rounds["mitmdump-streaming"]])
    print_report(results, summary, census, args.process_rounds)
    for kind, values in ratios.items():
        print(f"capacity per round, {kind}: {', '.join(f'{v:.1%}' for v in values)}")
    print(f"\n(bench ran {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(finite({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "process_rounds": {name: [asdict(r) for r in rs] for name, rs in rounds.items()},
            "capacity_per_round": ratios,
            "summary": summary,
            "medians": results,
            "steady_samples": samples,
            "hook_census": census,
            "targets": {"capacity": TARGET_CAPACITY, "startup_s": TARGET_STARTUP_S, "rss_mib": TARGET_RSS_MIB},
        }), indent=1))
        print(f"JSON written to {args.json}")
    return 0


# (key, label, target description or "", whether the addon/mitmdump ratio means anything)
ROWS = (
    ("startup_s", "start-up s (/health | 1st answer)"),
    ("first_call_s", "start-up s to 1st model call"),
    ("rss_started_mib", "idle RSS MiB after start-up"),
    ("rss_loaded_mib", "idle RSS MiB after load"),
    ("cpu_us_plain", "proxy CPU us/request, plain"),
    ("cpu_us_stream", "proxy CPU us/request, stream"),
    ("cpu_us_plain_loop", "  of which event-loop thread, plain"),
    ("cpu_us_stream_loop", "  of which event-loop thread, stream"),
    ("instructions_k", "proxy k-instructions/request"),
    ("rps_c1", "req/s, 1 client"), ("rps_c10", "req/s, 10 clients"),
    ("p50_c1", "p50 ms, 1 client"), ("p99_c1", "p99 ms, 1 client"),
    ("p50_c10", "p50 ms, 10 clients"), ("p99_c10", "p99 ms, 10 clients"),
    ("ttfb_keepalive_ms", "stream 1st event ms, kept conn"),
    ("ttfb_fresh_ms", "stream 1st event ms, new conn"),
    ("ttfb_translated_ms", "translated stream 1st event ms"),
    ("json_fresh_ms", "JSON answer ms, new conn"),
)


def _cell(value: float, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:>{width}.{digits}f}"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def print_report(results: dict[str, dict[str, float]], summary: dict[str, float], census: dict[str, dict],
                 process_rounds: int) -> None:
    nan = float("nan")
    direct, bare, addon = results.get("direct", {}), results["mitmdump"], results["addon"]
    print(f"\nLiteLLM Memory Proxy benchmark (loopback, one run). Start-up, RSS and CPU rows: medians over "
          f"{process_rounds} alternating rounds of a fresh process; the others: medians over steady-state rounds.\n")
    print(f"{'metric':<36}{'direct':>9}{'mitmdump':>10}{'addon':>9}{'addon/mitmdump':>16}{'addon/direct':>14}")
    for key, label in ROWS:
        d, b, a = direct.get(key, nan), bare.get(key, nan), addon.get(key, nan)
        print(f"{label:<36}{_cell(d, 9)}{_cell(b, 10)}{_cell(a, 9)}{_cell(a / b, 16, 3)}{_cell(a / d, 14, 3)}")
    print("\n(bare mitmdump buffers whole responses, so its stream figures are the full stream's duration;\n"
          " its start-up is to the first request answered, the addon's to the first GET /health answered)")

    print("\nmitmproxy hook dispatch (every event walks every addon object: one getattr each, one call per handler)")
    for name in ("mitmdump", "addon"):
        if name in census:
            walked, handlers, ours = dispatch_per_request(census[name])
            stages = census[name].get("our_stages", [])
            inside = f", dispatching to {len(stages)} stage addons" if stages else ""
            print(f"  {name:<9} {census[name]['objects']:>3} addon objects ({len(census[name]['our_objects'])} ours{inside}); "
                  f"per kept-alive request: {walked} objects walked, {handlers} handler calls, {ours} of them ours")
    if "addon" in census:
        events = census["addon"]["events"]
        for event in (*REQUEST_EVENTS, "update", "error", *CONNECTION_EVENTS):
            ours, stages = events[event]["ours"], events[event].get("stages", [])
            inside = f" -> {len(stages)} stage handlers: {', '.join(stages)}" if stages else ""
            print(f"    {event:<20} {len(ours)} of ours: {', '.join(ours) or '-'}{inside}")

    capacity, stream_capacity = summary["capacity_plain"], summary["capacity_stream"]
    print(f"\ntarget: capacity >= {TARGET_CAPACITY:.0%} of bare mitmdump by CPU time/request (median of per-round "
          f"bare/addon): plain {capacity:.1%} ({verdict(capacity >= TARGET_CAPACITY)}), stream {stream_capacity:.1%} "
          f"({verdict(stream_capacity >= TARGET_CAPACITY)})")
    print(f"        by the event-loop thread's CPU alone (what bounds requests/s on one core): plain "
          f"{summary['capacity_plain_loop']:.1%}, stream {summary['capacity_stream_loop']:.1%}")
    if "capacity_stream_vs_streaming" in summary:
        print(f"        stream, against mitmdump that streams too (stream_large_bodies=1; bare mitmdump buffers): "
              f"{summary['capacity_stream_vs_streaming']:.1%} ({summary['stream_streaming_us']:.0f} us/stream there)")
    if "capacity_floor_plain" in summary:
        print(f"        the floor, for scale: mitmdump running only what no routing addon can skip "
              f"(bench/floor_addon.py): plain {summary['capacity_floor_plain']:.1%}")
    if bare.get("instructions_k", nan) == bare.get("instructions_k", nan):
        print(f"        by callgrind instructions/request: {bare['instructions_k'] / addon['instructions_k']:.1%} "
              "(misses cache and allocation effects)")
    print(f"target: /health within {TARGET_STARTUP_S:.0f} s of spawning mitmdump: {addon['startup_s']:.2f} s "
          f"({verdict(addon['startup_s'] <= TARGET_STARTUP_S)}); bare mitmdump answers after {bare['startup_s']:.2f} s")
    worst_rss = max(addon["rss_started_mib"], addon["rss_loaded_mib"])
    print(f"target: idle RSS <= {TARGET_RSS_MIB:.0f} MiB: after start-up {addon['rss_started_mib']:.0f}, after load "
          f"{addon['rss_loaded_mib']:.0f} ({verdict(worst_rss <= TARGET_RSS_MIB)}); bare {bare['rss_loaded_mib']:.0f}")
    if direct:
        gap = addon["ttfb_keepalive_ms"] - direct["ttfb_keepalive_ms"]
        fresh_gap = addon["ttfb_fresh_ms"] - direct["ttfb_fresh_ms"]
        print(f"target: stream first event within 5 ms of direct (kept connection): +{gap:.2f} ms "
              f"({verdict(gap <= 5)}); on a new connection: +{fresh_gap:.2f} ms")
        translated_gap = addon["ttfb_translated_ms"] - addon["ttfb_keepalive_ms"]
        print(f"target: translated stream (Anthropic client, OpenAI upstream) first event within 10 ms of "
              f"pass-through (addon, kept connection): {translated_gap:+.2f} ms ({verdict(translated_gap <= 10)})")
        rps_ratio = min(addon["rps_c1"] / bare["rps_c1"], addon["rps_c10"] / bare["rps_c10"])
        print(f"wall-clock req/s, addon/mitmdump (noisy on a shared VM; CPU time above is the measure): {rps_ratio:.1%}")


def finite(value):
    """JSON has no NaN: unmeasured figures become null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
