"""A fleet on loopback: N real ``mitmdump -s addon.py`` proxies sharing one PostgreSQL and one Redis.

Each proxy is started the way tests/harness.py starts one (free ports, bounded waits), with its
own working directory, HOME and mitmproxy confdir (so its local files are its own), and the same
config file, whose `storage` names the shared servers through the environment, as a deployment
does (DATABASE_URL, REDIS_URL, MEMORY_ROUTING_PROXY_NAME). The proxies start together, which
also has them race for the schema migrations.

The servers are tests/fleet_servers.py's: a test stops and starts them mid-run with
``server_down(postgres_server)`` and kills a proxy with ``Fleet.sigkill``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from harness import STOP_TIMEOUT_SECONDS, RunningProxy, start_proxy, wait_until

READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


class StoppableServer(Protocol):
    """tests/fleet_servers.py's PostgresServer and RedisServer."""

    process: subprocess.Popen[bytes] | None

    def start(self) -> Any: ...

    def stop(self) -> None: ...


def fleet_config(model_list: list[dict[str, Any]], *, lease_seconds: float | None = None,
                 **sections: Any) -> dict[str, Any]:
    """A config whose `storage` reads both servers' URLs from the environment."""
    storage: dict[str, Any] = {"database_url": "os.environ/DATABASE_URL", "redis_url": "os.environ/REDIS_URL"}
    if lease_seconds is not None:
        storage["lease_seconds"] = lease_seconds
    return {"model_list": model_list, "storage": storage, **sections}


@dataclass
class Fleet:
    """The running proxies by name; every one of them is stopped by ``stop()``."""

    root: Path
    config: Path
    env: dict[str, str]
    extra_args: tuple[str, ...]
    proxies: dict[str, RunningProxy] = field(default_factory=dict)

    def __getitem__(self, name: str) -> RunningProxy:
        return self.proxies[name]

    def start(self, names: Sequence[str]) -> None:
        """Starts the named proxies together; each waits (bounded) for its listeners and LiteLLM."""
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            started = {name: pool.submit(self._start_one, name) for name in names}
            failures = []
            for name, future in started.items():
                try:
                    self.proxies[name] = future.result()
                except RuntimeError as e:
                    failures.append(f"{name}: {e}")
        if failures:
            raise RuntimeError("\n".join(failures))

    def _start_one(self, name: str) -> RunningProxy:
        workdir = self.root / name
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "HOME": str(home), "MEMORY_ROUTING_PROXY_NAME": name}
        return start_proxy(workdir, self.config, extra_args=self.extra_args, env=env)

    def sigkill(self, name: str) -> None:
        """Kills the proxy at once (no shutdown: its leases and queues are left as they are)."""
        process = self.proxies[name].process
        process.send_signal(signal.SIGKILL)
        process.wait(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    def wait_database_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every proxy has its database migrated (a proxy never waits for it before answering)."""
        for name, proxy in self.proxies.items():
            if proxy.process.poll() is None:
                assert wait_until(lambda p=proxy: database_ready(p), timeout), f"{name}: database not ready:\n{proxy.log()}"


def info(proxy: RunningProxy, **headers: str) -> dict[str, Any]:
    answer = httpx.get(f"{proxy.gateway_url}/memory-routing/info", headers=headers, timeout=REQUEST_TIMEOUT_S)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def health(proxy: RunningProxy) -> dict[str, Any]:
    answer = httpx.get(f"{proxy.gateway_url}/health", timeout=REQUEST_TIMEOUT_S)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def database_ready(proxy: RunningProxy) -> bool:
    return bool(info(proxy).get("fleet", {}).get("database", {}).get("ready"))


@contextlib.contextmanager
def running_fleet(root: Path, names: Sequence[str], config: dict[str, Any], *, database_url: str, redis_url: str,
                  env: dict[str, str] | None = None, extra_args: Sequence[str] = ()) -> Iterator[Fleet]:
    """Starts the proxies `names` on `config` against the two servers; waits until each has its
    database migrated; stops them all afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    fleet = Fleet(root, config_path, {**(env or {}), "DATABASE_URL": database_url, "REDIS_URL": redis_url},
                  tuple(extra_args))
    try:
        fleet.start(names)
        fleet.wait_database_ready()
        yield fleet
    finally:
        fleet.stop()


@contextlib.contextmanager
def server_down(server: StoppableServer) -> Iterator[None]:
    """The server is stopped for the block, and started again (same port, same data) after it,
    even when the block fails: the session's other tests use it too."""
    server.stop()
    try:
        yield
    finally:
        if server.process is None:
            server.start()
