"""Throwaway PostgreSQL and Redis servers for the fleet tests: Debian's packages, started in a
temp dir on free loopback ports, stopped (or killed, or restarted) by the tests themselves.

`initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` user that
Debian's package creates. Without the servers the fleet tests skip and say why, unless
MEMORY_ROUTING_REQUIRE_FLEET_SERVERS is set (`.ci/run` sets it): then they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness import free_port, wait_until
from memory_routing.fleet.health import FleetHealth
from memory_routing.fleet.postgres import FleetDatabase
from memory_routing.memory.pg_store import PostgresMemoryStore

REQUIRE_ENV = "MEMORY_ROUTING_REQUIRE_FLEET_SERVERS"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 20.0


def _missing(what: str, install: str) -> None:
    message = f"{what} not installed ({install}; `make test` installs it when run as root)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{message}, and {REQUIRE_ENV} says the fleet tests must run")
    pytest.skip(message)


def _stop(process: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Sends `sig` and waits (bounded); kills what does not stop."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_STOP_TIMEOUT_S)


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian keeps them versioned)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One throwaway cluster: trust authentication on 127.0.0.1, no durability (it is thrown away)."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.user = "postgres" if os.geteuid() == 0 else None
        self.log_path = root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _popen(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, user=self.user, cwd=self.root, **kwargs)  # type: ignore[call-overload]

    def init(self) -> PostgresServer:
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        initdb = self._popen([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                              "--encoding=UTF8", "--locale=C", "--no-sync"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = initdb.communicate(timeout=120)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {err.decode(errors='replace')[-2000:]}")
        return self

    def start(self) -> PostgresServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes to it while it runs
        self.process = self._popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=log)
        log.close()
        if not wait_until(self.accepts, _START_TIMEOUT_S):
            raise RuntimeError(f"postgres did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
        return self

    def accepts(self) -> bool:
        import psycopg
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected, the data stays for start()."""
        _stop(self.process, signal.SIGINT)
        self.process = None

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


class RedisServer:
    """One throwaway redis-server: no persistence, loopback only."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes to it while it runs
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--protected-mode", "no"], stdout=log, stderr=log, cwd=self.root)
        log.close()
        if not wait_until(self.accepts, _START_TIMEOUT_S):
            raise RuntimeError(f"redis-server did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
        return self

    def accepts(self) -> bool:
        import redis
        try:
            return bool(redis.Redis.from_url(self.url(), socket_timeout=2, socket_connect_timeout=2).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)
        self.process = None

    def flush(self) -> None:
        import redis
        redis.Redis.from_url(self.url(), socket_timeout=5).flushall()


@contextmanager
def fleet_database(url: str, health: FleetHealth | None = None, **options: Any) -> Iterator[FleetDatabase]:
    """A FleetDatabase of ``url``, started and migrated (a bounded wait); its pool closed afterwards."""
    database = FleetDatabase(url, health=health or FleetHealth(), **options)
    database.start()
    try:
        assert database.wait_ready(30)
        yield database
    finally:
        database.close()


@contextmanager
def postgres_memory_store(url: str) -> Iterator[PostgresMemoryStore]:
    """The fleet's memory store on a migrated database of ``url``; closed afterwards."""
    with fleet_database(url) as database:
        store = PostgresMemoryStore(database)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        _missing("PostgreSQL server", "apt-get install postgresql")
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="mr-postgres-"))
    server = PostgresServer(bin_dir, root).init().start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server", "apt-get install redis-server")
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="mr-redis-"))
    server = RedisServer(binary, root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of the session's server, for this test alone."""
    if postgres_server.process is None:
        postgres_server.start()  # a test before this one stopped it
    return postgres_server.create_database()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url()
