"""Benchmark: a proxy on the fleet's backends (PostgreSQL + Redis) against the single-machine default.

(a) CPU per call: alternating rounds of a fresh mitmdump each (default, fleet, default, fleet, ...;
    bench/bench.py's process_round), the fleet/default ratio taken within each round, the median
    reported. Target: <= 1.15 (the fleet adds no real cost on the hot path).
(b) Throughput of 1 and of 2 fleet proxies sharing one PostgreSQL and one Redis, 10 keep-alive
    clients per proxy, with the CPU seconds each class of process spent meanwhile (proxies, the
    load generator, the upstream, PostgreSQL, Redis, the rest of the machine): they share its cores,
    and the figures say which of them limits the result.
(c) Recall p95 on PostgreSQL at 100k and 1M memories: bench/pg_recall.py, run against this
    bench's server when it exists.
(d) The added latency of a model call (one client, kept connection): p50/p99 of a plain call and
    the first event of a stream, long-lived default and fleet proxies measured in alternating rounds.

PostgreSQL and Redis are throwaway servers started here on free loopback ports (tests/fleet_servers.py's
classes; PostgreSQL without durability: fsync and synchronous_commit off, so a real server's writes
cost it more than here). The upstream is bench/bench.py's. Every loop is bounded by a count or a
deadline.

    make bench-fleet                               # or: .venv/bin/python bench/fleet.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench as core  # bench/bench.py: this script's directory is first on sys.path

ROOT = core.ROOT
sys.path.insert(0, str(ROOT / "tests"))
# The test suite's throwaway servers (imported by name: tests/ is not a package).
fleet_servers: Any = importlib.import_module("fleet_servers")

TARGET_CPU_RATIO = 1.15
READY_TIMEOUT_S = 60.0
PG_RECALL = Path(__file__).resolve().parent / "pg_recall.py"
PG_RECALL_TIMEOUT_S = 3600.0
HEAVY_USER_ROWS, LIGHT_USER_ROWS = 50_000, 1_000
DATABASE_LINE = "  database_url: os.environ/BENCH_DATABASE_URL\n"
REDIS_LINE = "  redis_url: os.environ/BENCH_REDIS_URL\n"
# The proxy's `storage` per kind: the default has none; --breakdown adds each server alone.
STORAGE = {"default": "", "fleet": f"storage:\n{DATABASE_LINE}{REDIS_LINE}",
           "database-only": f"storage:\n{DATABASE_LINE}", "redis-only": f"storage:\n{REDIS_LINE}"}
KINDS = ("default", "fleet")
BREAKDOWN_KINDS = ("database-only", "redis-only")


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str
    postgres_pid: int
    redis_pid: int

    def env(self, name: str) -> dict[str, str]:
        return {"BENCH_DATABASE_URL": self.database_url, "BENCH_REDIS_URL": self.redis_url,
                "MEMORY_ROUTING_PROXY_NAME": name}


def config_of(kind: str) -> str:
    return STORAGE[kind]


def uses_database(kind: str) -> bool:
    return DATABASE_LINE in STORAGE[kind]


def get_json(port: int, path: str, timeout: float = 10.0) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"user-agent": "OpenAI/Python bench"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_database_ready(port: int) -> None:
    """Until the proxy has its database migrated and its pool open (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if get_json(port, "/memory-routing/info").get("fleet", {}).get("database", {}).get("ready"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)  # polling the proxy, bounded by the deadline
    raise RuntimeError(f"the proxy on port {port} did not reach its database within {READY_TIMEOUT_S:.0f} s")


def start_proxy(workdir: Path, name: str, kind: str, upstream_port: int, servers: Servers) -> tuple[subprocess.Popen, int]:
    """A long-lived proxy in its own workdir (its own confdir), ready to be measured."""
    workdir.mkdir(parents=True, exist_ok=True)
    process, port, log = core.spawn_mitmdump(workdir, name, upstream_port, True, env=servers.env(name),
                                             config_extra=config_of(kind))
    core.wait_answered(port, process, log, "POST", "/v1/chat/completions", core.CHAT_BODY,
                       time.monotonic() + core.START_TIMEOUT)
    if uses_database(kind):
        wait_database_ready(port)
    return process, port


# --- CPU seconds per class of process ----------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process, its live descendants, and the children it has already reaped
    (a PostgreSQL server's ended backends)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0.0
    for pid in tree:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        if pid == root:
            total += (int(fields[13]) + int(fields[14])) / tick
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, over all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


@dataclass
class ThroughputRun:
    proxies: int
    requests: int
    seconds: float
    rps: float
    cpu_s: dict[str, float]  # by class of process, during the measured batch
    machine_busy_cores: float  # all cores' busy time over the wall time


def measure_fleet_throughput(ports: list[int], pids: list[int], upstream_pid: int, servers: Servers,
                             concurrency: int, per_proxy: int) -> ThroughputRun:
    async def drive() -> int:
        sent = await asyncio.gather(*(core.run_batch(port, core.CHAT_BODY, concurrency, per_proxy) for port in ports))
        return sum(sent)

    asyncio.run(drive())  # warm-up: first-use costs, pools filled
    classes = {"proxies": lambda: sum(core.cpu_seconds(pid) for pid in pids),
               "load generator": lambda: core.cpu_seconds(os.getpid()),
               "upstream": lambda: core.cpu_seconds(upstream_pid),
               "postgresql": lambda: tree_cpu_seconds(servers.postgres_pid),
               "redis": lambda: tree_cpu_seconds(servers.redis_pid)}
    before = {name: read() for name, read in classes.items()}
    busy_before, _ = machine_busy_seconds()
    started = time.perf_counter()
    sent = asyncio.run(drive())
    seconds = time.perf_counter() - started
    cpu = {name: read() - before[name] for name, read in classes.items()}
    busy = machine_busy_seconds()[0] - busy_before
    cpu["rest of the machine"] = max(busy - sum(cpu.values()), 0.0)
    return ThroughputRun(len(ports), sent, seconds, sent / seconds, cpu, busy / seconds)


# --- (d) latency --------------------------------------------------------------------------------


def latency_round(port: int, calls: int, ttfb_rounds: int) -> dict[str, float]:
    plain = asyncio.run(core.measure_throughput(port, 1, calls))
    stream = asyncio.run(core.measure_ttfb(port, ttfb_rounds, fresh=False)) * 1000
    return {"p50_ms": plain.p50_ms, "p99_ms": plain.p99_ms, "stream_first_event_ms": stream}


# --- (c) recall on PostgreSQL ------------------------------------------------------------------


def pg_recall(postgres: Any, sizes: list[int], questions: int, data: Path | None) -> dict[str, Any]:
    """bench/pg_recall.py's figures at each size, each in a fresh database of this bench's server, or why not."""
    if not PG_RECALL.exists():
        return {"skipped": "bench/pg_recall.py is not in this checkout (the PostgreSQL memory's own bench)"}
    runs = []
    for size in sizes:
        # At every size one heavy user owns 50k rows (the hard case) and light users 1,000
        # each: at 100k, pg_recall.py's own defaults; at 1M, the figures of docs/deploy.md.
        heavy = min(HEAVY_USER_ROWS, size // 2)
        args = ["--memories", str(size), "--heavy-share", f"{heavy / size:g}",
                "--light-users", str(max(1, (size - heavy) // LIGHT_USER_ROWS)), "--questions", str(questions),
                *(["--data", str(data)] if data else [])]
        result = subprocess.run([sys.executable, str(PG_RECALL), "--database-url", postgres.create_database(), *args],
                                capture_output=True, text=True, timeout=PG_RECALL_TIMEOUT_S,
                                env=os.environ | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        runs.append({"memories": size, "command": " ".join(["bench/pg_recall.py --database-url <url>", *args]),
                     "returncode": result.returncode, "output": result.stdout.strip(),
                     "stderr": result.stderr.strip()[-2000:]})
    return {"runs": runs}


# --- the run -------------------------------------------------------------------------------------


def start_servers(root: Path) -> tuple[Any, Any]:
    bin_dir = fleet_servers.postgres_bin_dir()
    redis_binary = shutil.which("redis-server")
    if bin_dir is None or redis_binary is None:
        raise SystemExit("bench-fleet needs Debian's postgresql and redis-server (`make fleet-servers` as root installs them)")
    # Directories of their own, as the test fixtures make them: as root, PostgreSQL runs as the
    # postgres user, who owns its directory and must reach it (mkdtemp's are private).
    postgres = fleet_servers.PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="bench-fleet-postgres-"))).init().start()
    try:
        redis = fleet_servers.RedisServer(redis_binary, Path(tempfile.mkdtemp(prefix="bench-fleet-redis-"))).start()
    except Exception:
        postgres.stop()
        raise
    return postgres, redis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches (a few minutes)")
    parser.add_argument("--process-rounds", type=int, default=5, help="alternating rounds of a fresh default and fleet proxy")
    parser.add_argument("--concurrency", type=int, default=10, help="clients per proxy in the CPU and throughput batches")
    parser.add_argument("--cpu-requests", type=int, default=1200, help="plain requests per measured CPU batch")
    parser.add_argument("--stream-requests", type=int, default=250, help="streams per measured CPU batch")
    parser.add_argument("--throughput-requests", type=int, default=3000, help="requests per proxy in a throughput batch")
    parser.add_argument("--latency-rounds", type=int, default=4, help="alternating latency rounds per kind")
    parser.add_argument("--latency-calls", type=int, default=300, help="calls (one client) per latency round")
    parser.add_argument("--recall-sizes", type=lambda s: [int(n) for n in s.split(",")], default=None,
                        help="memories in PostgreSQL for bench/pg_recall.py, comma-separated "
                             "(default 100000,1000000; --quick: 100000)")
    parser.add_argument("--recall-questions", type=int, default=300, help="LoCoMo questions asked per user and size")
    parser.add_argument("--locomo", type=Path, help="locomo-dev.json, when not at ../shared/data/ (bench/pg_recall.py --data)")
    parser.add_argument("--breakdown", action="store_true",
                        help="(a) also with PostgreSQL alone and Redis alone, to see which one costs what")
    parser.add_argument("--json", type=Path, help="also write every sample and figure here")
    args = parser.parse_args()
    if args.recall_sizes is None:
        args.recall_sizes = [100_000] if args.quick else [100_000, 1_000_000]
    if args.quick:
        args.process_rounds = min(args.process_rounds, 3)
        args.cpu_requests, args.stream_requests = min(args.cpu_requests, 600), min(args.stream_requests, 120)
        args.throughput_requests = min(args.throughput_requests, 800)
        args.latency_rounds, args.latency_calls = min(args.latency_rounds, 2), min(args.latency_calls, 150)
        args.recall_questions = min(args.recall_questions, 100)
    started = time.monotonic()
    upstream, upstream_port = core.start_upstream()
    assert upstream.pid is not None
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    postgres = redis = None
    cpu_kinds = KINDS + (BREAKDOWN_KINDS if args.breakdown else ())
    rounds: dict[str, list[core.ProcessRound]] = {kind: [] for kind in cpu_kinds}
    throughput: list[ThroughputRun] = []
    latency: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    try:
        postgres, redis = start_servers(root)
        assert postgres.process is not None and redis.process is not None
        servers = Servers(postgres.create_database(), redis.url(), postgres.process.pid, redis.process.pid)

        # (a) A fresh process per round, default and fleet alternating, ratios within a round.
        cpu_dir = root / "cpu"
        cpu_dir.mkdir()
        for index in range(args.process_rounds):
            for kind in cpu_kinds:
                ready = wait_database_ready if uses_database(kind) else None
                rounds[kind].append(core.process_round(
                    cpu_dir, upstream_port, True, index, args.concurrency, args.cpu_requests, args.stream_requests,
                    kind=kind, config_extra=config_of(kind), env=servers.env(f"{kind}-{index}"), until_ready=ready))
                print(f"round {index + 1}/{args.process_rounds} {kind}: {rounds[kind][-1]}", file=sys.stderr)

        # (b) 1, then 2 fleet proxies on the one PostgreSQL and Redis.
        for count in (1, 2):
            running = [start_proxy(root / f"throughput-{count}-{i}", f"fleet-{i}", "fleet", upstream_port, servers)
                       for i in range(count)]
            try:
                throughput.append(measure_fleet_throughput(
                    [port for _, port in running], [process.pid for process, _ in running], upstream.pid, servers,
                    args.concurrency, args.throughput_requests))
                print(f"throughput, {count} proxies: {throughput[-1]}", file=sys.stderr)
            finally:
                for process, _ in running:
                    core.stop(process)

        # (d) Long-lived default and fleet proxies, alternating latency rounds.
        steady = {kind: start_proxy(root / f"latency-{kind}", f"latency-{kind}", kind, upstream_port, servers)
                  for kind in KINDS}
        try:
            for _, port in steady.values():
                asyncio.run(core.run_batch(port, core.CHAT_BODY, 1, 50))  # warm-up
            for _ in range(args.latency_rounds):
                for kind, (_, port) in steady.items():
                    latency[kind].append(latency_round(port, args.latency_calls, max(10, args.latency_calls // 10)))
        finally:
            for process, _ in steady.values():
                core.stop(process)

        # (c) Last: it fills the database with up to a million rows.
        recall = pg_recall(postgres, args.recall_sizes, args.recall_questions, args.locomo)
    finally:
        upstream.terminate()
        upstream.join(15)
        for server in (redis, postgres):
            if server is not None:
                server.stop()
                shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)

    ratios = {kind: [f.__dict__[f"cpu_us_{kind}"] / d.__dict__[f"cpu_us_{kind}"]
                     for d, f in zip(rounds["default"], rounds["fleet"], strict=True)]
              for kind in ("plain", "stream", "plain_loop", "stream_loop")}
    # Each server alone against the default, within the same rounds (--breakdown).
    part_ratios = {part: {kind: core.median([f.__dict__[f"cpu_us_{kind}"] / d.__dict__[f"cpu_us_{kind}"]
                                             for d, f in zip(rounds["default"], rounds[part], strict=True)])
                          for kind in ("plain", "stream", "plain_loop", "stream_loop")}
                   for part in cpu_kinds if part not in KINDS}
    cpu_medians = {kind: {key: core.median([getattr(r, key) for r in rs]) for key in core.ProcessRound.__dataclass_fields__}
                   for kind, rs in rounds.items()}
    latency_medians = {kind: {key: core.median([r[key] for r in rs]) for key in rs[0]} for kind, rs in latency.items()}
    summary = {
        "cpu_ratio_plain": core.median(ratios["plain"]), "cpu_ratio_stream": core.median(ratios["stream"]),
        "cpu_ratio_plain_loop": core.median(ratios["plain_loop"]),
        "cpu_ratio_stream_loop": core.median(ratios["stream_loop"]),
        "added_p50_ms": latency_medians["fleet"]["p50_ms"] - latency_medians["default"]["p50_ms"],
        "added_p99_ms": latency_medians["fleet"]["p99_ms"] - latency_medians["default"]["p99_ms"],
        "added_stream_first_event_ms": (latency_medians["fleet"]["stream_first_event_ms"]
                                        - latency_medians["default"]["stream_first_event_ms"]),
    }
    print_report(args, cpu_medians, ratios, part_ratios, summary, throughput, latency_medians, recall)
    print(f"\n(bench-fleet ran {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(core.finite({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "process_rounds": {kind: [asdict(r) for r in rs] for kind, rs in rounds.items()},
            "cpu_ratio_per_round": ratios, "cpu_ratio_by_part": part_ratios, "cpu_medians": cpu_medians,
            "summary": summary,
            "throughput": [asdict(t) for t in throughput], "latency_rounds": latency, "latency_medians": latency_medians,
            "pg_recall": recall, "versions": server_versions(),
            "targets": {"cpu_ratio": TARGET_CPU_RATIO},
        }), indent=1))
        print(f"JSON written to {args.json}")
    return 0


def server_versions() -> dict[str, str]:
    bin_dir = fleet_servers.postgres_bin_dir()
    found = {}
    for name, command in (("postgresql", [str(bin_dir / "postgres"), "--version"] if bin_dir else None),
                          ("redis", ["redis-server", "--version"])):
        if command:
            found[name] = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
    return found


def print_report(args: argparse.Namespace, cpu: dict[str, dict[str, float]], ratios: dict[str, list[float]],
                 part_ratios: dict[str, dict[str, float]],
                 summary: dict[str, float], throughput: list[ThroughputRun], latency: dict[str, dict[str, float]],
                 recall: dict[str, Any]) -> None:
    print(f"\nLiteLLM Memory Proxy, fleet benchmark (loopback, one run; {', '.join(server_versions().values())})")
    print(f"\n(a) CPU per call, medians over {args.process_rounds} alternating rounds of a fresh process "
          f"({args.concurrency} keep-alive clients; memory and usage rows on):")
    print(f"{'':<36}{'default':>10}{'fleet':>10}{'fleet/default':>15}")
    for key, label in (("cpu_us_plain", "proxy CPU us/call, plain"), ("cpu_us_stream", "proxy CPU us/call, stream"),
                       ("cpu_us_plain_loop", "  of which event-loop thread, plain"),
                       ("cpu_us_stream_loop", "  of which event-loop thread, stream"),
                       ("startup_s", "start-up s to /health"), ("rss_loaded_mib", "idle RSS MiB after load")):
        d, f = cpu["default"][key], cpu["fleet"][key]
        print(f"{label:<36}{d:>10.2f}{f:>10.2f}{f / d:>15.3f}")
    for kind, values in ratios.items():
        print(f"  fleet/default per round, {kind}: {', '.join(f'{v:.3f}' for v in values)}")
    for part, by_kind in part_ratios.items():
        print(f"  {part}/default, medians: " + ", ".join(f"{kind} {value:.3f}" for kind, value in by_kind.items()))
    plain, stream = summary["cpu_ratio_plain"], summary["cpu_ratio_stream"]
    print(f"target: fleet/default CPU per call <= {TARGET_CPU_RATIO}: plain {plain:.3f} "
          f"({core.verdict(plain <= TARGET_CPU_RATIO)}), stream {stream:.3f} ({core.verdict(stream <= TARGET_CPU_RATIO)})")

    print(f"\n(b) throughput of fleet proxies sharing one PostgreSQL and one Redis ({args.concurrency} keep-alive clients "
          f"per proxy, plain calls; {os.cpu_count()} cores for everything):")
    classes = list(throughput[0].cpu_s) if throughput else []
    print(f"{'proxies':<9}{'calls':>7}{'calls/s':>9}{'cores busy':>12}  CPU seconds: " + ", ".join(classes))
    for run in throughput:
        shares = ", ".join(f"{run.cpu_s[c]:.1f}" for c in classes)
        print(f"{run.proxies:<9}{run.requests:>7}{run.rps:>9.0f}{run.machine_busy_cores:>12.2f}  {shares}")
    for run in throughput:
        top = max(run.cpu_s, key=lambda c: run.cpu_s[c])
        print(f"  {run.proxies} proxies: the most CPU went to {top} ({run.cpu_s[top] / run.seconds:.2f} cores of "
              f"{os.cpu_count()}); the machine was {run.machine_busy_cores / (os.cpu_count() or 1):.0%} busy")
    if len(throughput) == 2:
        print(f"  2 proxies / 1 proxy: {throughput[1].rps / throughput[0].rps:.2f}x")

    print("\n(c) recall on PostgreSQL (bench/pg_recall.py; p50/p95 in ms of a store search and of a whole recall block):")
    if "skipped" in recall:
        print(f"  not measured: {recall['skipped']}")
    for run in recall.get("runs", []):
        print(f"  {run['memories']:,} memories: {run['command']}")
        print("    " + (run["output"] or "(no output)").replace("\n", "\n    "))
        if run["returncode"]:
            print(f"    exited {run['returncode']}: {run['stderr']}")

    print(f"\n(d) latency of a model call, one client on a kept connection, medians over {args.latency_rounds} "
          "alternating rounds:")
    print(f"{'':<28}{'default':>10}{'fleet':>10}{'added':>10}")
    for key, label in (("p50_ms", "plain call p50 ms"), ("p99_ms", "plain call p99 ms"),
                       ("stream_first_event_ms", "stream first event ms")):
        d, f = latency["default"][key], latency["fleet"][key]
        print(f"{label:<28}{d:>10.2f}{f:>10.2f}{f - d:>+10.2f}")


if __name__ == "__main__":
    sys.exit(main())
