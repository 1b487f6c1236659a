"""What the fleet's in-flight cap (a Redis lease) adds per call against the local cap (a counter
and a queue in the process).

One asyncio loop, as mitmproxy's: per call, take a slot and give it back, N calls in a row and
N calls from C concurrent tasks (a cap above C: nobody waits; this is the cost of the slot
itself, not of queueing). Prints, per variant, wall time per call (µs: the latency a call gains)
and CPU per call of this process (µs: what mitmproxy's loop pays) and of redis-server (µs, from
/proc). Starts a throwaway redis-server (tests/fleet_servers.py) on a free loopback port.

    .venv/bin/python bench/fleet_cap_cost.py [calls] [concurrency]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fleet_servers import RedisServer  # type: ignore[import-not-found]  # noqa: E402
from memory_routing.addons.in_flight import _HostSlots  # noqa: E402
from memory_routing.fleet.health import FleetHealth  # noqa: E402
from memory_routing.fleet.leases import FleetCap  # noqa: E402

HOST = "api.example:443"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def measure(name: str, one_call: Callable[[], Awaitable[None]], calls: int, concurrency: int,
                  redis_pid: int | None) -> None:
    for _ in range(min(calls, 200)):  # warm-up
        await one_call()
    for label, tasks in (("sequential", 1), (f"{concurrency} concurrent", concurrency)):
        per_task = calls // tasks

        async def worker(per_task: int = per_task) -> None:
            for _ in range(per_task):
                await one_call()

        redis_before = process_cpu_s(redis_pid) if redis_pid else 0.0
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
        redis_cpu = process_cpu_s(redis_pid) - redis_before if redis_pid else 0.0
        done = per_task * tasks
        print(f"{name:>12} {label:>14}: {wall / done * 1e6:8.1f} µs wall/call, {cpu / done * 1e6:7.1f} µs CPU/call here, "
              f"{redis_cpu / done * 1e6:6.1f} µs CPU/call in redis-server")


async def main(calls: int, concurrency: int, redis_server: RedisServer) -> None:
    slots = _HostSlots()

    async def local_call() -> None:
        # The limiter's fast path: a free slot taken and given back, no waiting.
        slots.in_flight += 1
        await asyncio.sleep(0)  # the call itself yields once, in both variants
        slots.release()

    cap = FleetCap(redis_server.url(), FleetHealth(), lease_seconds=30, proxy_name="bench")
    cap.start()

    async def fleet_call() -> None:
        slot = await cap.take(HOST, concurrency + 1, timeout=10)
        assert slot is not None
        await asyncio.sleep(0)
        slot.release()
        await asyncio.gather(*cap._background)  # the release's round trip, counted in the call

    try:
        await measure("local cap", local_call, calls, concurrency, None)
        assert redis_server.process is not None
        await measure("Redis lease", fleet_call, calls, concurrency, redis_server.process.pid)
    finally:
        await cap.close()


if __name__ == "__main__":
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server = RedisServer(binary, root).start()
    try:
        asyncio.run(main(calls, concurrency, server))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
