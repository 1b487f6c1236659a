"""Shared fixtures: the fake upstream, and the fleet's servers (tests/fleet_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fake_upstream import FakeUpstream

# Throwaway PostgreSQL and Redis servers (postgres_server, redis_server, database_url, redis_url).
pytest_plugins = ["fleet_servers"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def upstream(fake: FakeUpstream) -> FakeUpstream:
    """The module's fake upstream, emptied for this test."""
    fake.reset()
    return fake
