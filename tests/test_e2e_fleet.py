"""End-to-end: three proxies A, B and C share one PostgreSQL and one Redis, and behave as one proxy.

Real `mitmdump -s addon.py` processes (tests/fleet_harness.py), each with its own HOME and
confdir, in front of the fake upstreams, driven by real clients (the openai and anthropic SDKs,
httpx, headless Chromium). The servers are real too (tests/fleet_servers.py): the outage test
stops and starts them under running proxies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fake_upstream import FakeUpstream
from fleet_harness import Fleet, fleet_config, health, info, running_fleet
from fleet_servers import PostgresServer, RedisServer

pytestmark = pytest.mark.e2e

NAMES = ("A", "B", "C")
WAIT = 30.0
KEYS = {"MR_FLEET_OPENAI_KEY": "sk-fleet-openai-2201", "MR_FLEET_ANTHROPIC_KEY": "sk-ant-fleet-2202"}


def model_list(fake: FakeUpstream) -> list[dict]:
    return [
        {"model_name": "gpt-4o", "litellm_params": {
            "model": "openai/gpt-4o", "api_base": f"{fake.url}/v1", "api_key": "os.environ/MR_FLEET_OPENAI_KEY"}},
        {"model_name": "claude-sonnet-4-5", "litellm_params": {
            "model": "anthropic/claude-sonnet-4-5", "api_base": fake.url, "api_key": "os.environ/MR_FLEET_ANTHROPIC_KEY"}},
    ]


@pytest.fixture(scope="module")
def fleet(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer,
          redis_server: RedisServer) -> Iterator[Fleet]:
    # One database and one Redis for the module's proxies (the per-test fixtures are per test).
    if postgres_server.process is None:
        postgres_server.start()
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    config = fleet_config(model_list(fake), user_id_mappings={"default_user_id": "fleet-dev"})
    with running_fleet(tmp_path_factory.mktemp("fleet"), NAMES, config, database_url=postgres_server.create_database(),
                       redis_url=redis_server.url(), env=KEYS) as running:
        yield running


def test_the_proxies_start_together_on_one_migrated_database(fleet: Fleet):
    for name in NAMES:
        status = info(fleet[name])["fleet"]
        assert status["proxy"] == name
        assert status["database"]["ready"] is True and status["database"]["migration_error"] is None
        assert status["degraded"] == {}
        assert health(fleet[name])["status"] == "healthy"
    logs = "".join(fleet[name].log() for name in NAMES)
    assert logs.count("fleet database: applied migrations") == 1  # one proxy migrated, under the lock
    for secret in KEYS.values():
        assert secret not in logs
