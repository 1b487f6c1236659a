"""Start a real ``mitmdump -s addon.py`` on free loopback ports, and stop it again."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 15.0
# Logged by routing/litellm_loading.py once LiteLLM's background import is done.
LITELLM_LOADED = "memory-routing: LiteLLM loaded"
START_ATTEMPTS = 3  # a free port can be taken by someone else between probing and binding


def wait_until(predicate, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass (ordering by events, not sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proxy_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.update(extra or {})
    return env


@dataclass
class RunningProxy:
    process: subprocess.Popen[bytes]
    forward_port: int
    gateway_port: int
    confdir: Path
    log_path: Path

    @property
    def forward_url(self) -> str:
        return f"http://127.0.0.1:{self.forward_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECONDS)


def mitmdump_args(
    config: Path,
    confdir: Path,
    forward_port: int,
    gateway_port: int,
    gateway_upstream: str,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        str(MITMDUMP),
        "-s", str(ADDON),
        "--set", f"confdir={confdir}",
        "--listen-host", "127.0.0.1",
        "--mode", f"regular@{forward_port}",
        "--mode", f"reverse:{gateway_upstream}@{gateway_port}",
        "--set", "connection_strategy=lazy",
        "--set", f"memory_routing_config={config}",
        *extra,
    ]


def start_proxy(
    workdir: Path,
    config: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    gateway_upstream: str | None = None,
    wait_for_litellm: bool = True,
) -> RunningProxy:
    """Start mitmdump and wait (bounded) until both listeners are up and, unless told otherwise,
    LiteLLM is loaded (model calls wait for it; the tests' per-call timeouts should not)."""
    confdir = workdir / "confdir"
    confdir.mkdir(exist_ok=True)
    last_log = ""
    for attempt in range(START_ATTEMPTS):
        forward_port, gateway_port = free_port(), free_port()
        # Nothing listens on this port: a request that escaped the addon fails loudly.
        upstream = gateway_upstream or f"http://127.0.0.1:{free_port()}"
        log_path = workdir / f"mitmdump-{attempt}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                mitmdump_args(config, confdir, forward_port, gateway_port, upstream, extra_args),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=proxy_env(env),
                cwd=workdir,
            )
        proxy = RunningProxy(process, forward_port, gateway_port, confdir, log_path)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            log = proxy.log()
            listening = f"127.0.0.1:{forward_port}" in log and f"127.0.0.1:{gateway_port}" in log and _accepts(gateway_port)
            if listening and (not wait_for_litellm or proxy.wait_for_log(LITELLM_LOADED, max(deadline - time.monotonic(), 0))):
                return proxy
            time.sleep(0.1)
        proxy.stop()
        last_log = proxy.log()
        if "address already in use" not in last_log.lower():
            break
    raise RuntimeError(f"mitmdump did not start:\n{last_log}")


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def run_mitmdump_to_exit(
    workdir: Path, args: Sequence[str], timeout: float = START_TIMEOUT_SECONDS, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run mitmdump with ``args`` expecting it to refuse to start; bounded by ``timeout``."""
    return subprocess.run(
        [str(MITMDUMP), "-s", str(ADDON), "--set", f"confdir={workdir / 'confdir'}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=proxy_env(env),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def running_proxy(workdir: Path, config: Path, **kwargs) -> Iterator[RunningProxy]:
    proxy = start_proxy(workdir, config, **kwargs)
    try:
        yield proxy
    finally:
        proxy.stop()
