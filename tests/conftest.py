"""Shared fixtures: the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fake_upstream import FakeUpstream


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
