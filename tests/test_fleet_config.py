"""`storage` in config.yaml: validated like the rest, with file and key path, and never echoing
a URL's password; server URLs shown without credentials; degraded parts told once."""

from __future__ import annotations

import logging

import pytest

from memory_routing.config.schema import parse_config
from memory_routing.errors import ConfigError
from memory_routing.fleet.health import DATABASE, REDIS, FleetHealth
from memory_routing.fleet.identity import proxy_name, shown_url

BASE = "model_list:\n- model_name: a\n  litellm_params: {model: openai/gpt-4o}\n"


def test_absent_storage_keeps_everything_local() -> None:
    storage = parse_config(BASE, "config.yaml", {}).storage
    assert not storage.uses_database and not storage.uses_redis
    assert storage.lease_seconds == 30.0


def test_urls_from_the_environment() -> None:
    config = parse_config(BASE + "storage:\n  database_url: os.environ/DATABASE_URL\n  redis_url: os.environ/REDIS_URL\n"
                          "  proxy_name: gw-1\n  lease_seconds: 5\n", "config.yaml",
                          {"DATABASE_URL": "postgresql://u:pw@db:5432/mr", "REDIS_URL": "redis://r:6379/0"})
    storage = config.storage
    assert storage.uses_database and storage.uses_redis
    assert storage.database_url is not None and storage.database_url.value == "postgresql://u:pw@db:5432/mr"
    assert "pw" not in repr(storage)
    assert (storage.proxy_name, storage.lease_seconds) == ("gw-1", 5.0)


def test_an_unset_variable_is_a_warning_and_stays_local() -> None:
    config = parse_config(BASE + "storage:\n  database_url: os.environ/DATABASE_URL\n", "config.yaml", {})
    assert not config.storage.uses_database
    assert config.warnings == ("config.yaml: storage.database_url: environment variable DATABASE_URL is not set:"
                               " memories and usage stay in this proxy's local file",)


@pytest.mark.parametrize(("yaml_text", "env", "message"), [
    ("storage:\n  database_url: mysql://u:secretpw@h/db\n", {},
     "config.yaml: storage.database_url: must be a URL like postgresql://"),
    ("storage:\n  redis_url: os.environ/R\n", {"R": "http://u:secretpw@h"},
     "config.yaml: storage.redis_url: must be a URL like redis://host:6379/0 (the value of os.environ/R is not"),
    ("storage:\n  lease_seconds: 1\n", {}, "config.yaml: storage.lease_seconds: must be a number of seconds from 2 to 3600"),
    ("storage:\n  redis: x\n", {}, "config.yaml: storage.redis: unknown key, did you mean `redis_url`?"),
    ("storgae:\n  redis_url: x\n", {}, "config.yaml: storgae: unknown section, did you mean `storage`?"),
    ("storage:\n  proxy_name: 'a b'\n", {}, "config.yaml: storage.proxy_name: invalid"),
])
def test_bad_storage_names_file_and_key_and_hides_the_password(yaml_text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + yaml_text, "config.yaml", env)
    assert str(caught.value).startswith(message)
    assert "secretpw" not in str(caught.value)


def test_shown_url_drops_credentials_and_query() -> None:
    assert shown_url("postgresql://u:pw@db.example:5433/mr?password=pw2") == "postgresql://db.example:5433/mr"
    assert shown_url("redis://:pw@r:6379/2") == "redis://r:6379/2"


def test_proxy_name_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_ROUTING_PROXY_NAME", "pod-7")
    assert proxy_name("gw-1") == "gw-1"
    assert proxy_name(None) == "pod-7"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_outage_is_told_once_and_its_end_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Own handler, not caplog: a mitmproxy log handler another test module installed on the root
    # logger may outlive its event loop.
    logger = logging.getLogger("memory_routing.fleet.health")
    seen = _Records()
    monkeypatch.setattr(logger, "propagate", False)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears logging's level cache
    logger.addHandler(seen)
    health = FleetHealth()
    try:
        for _ in range(3):
            health.failed(REDIS, "ConnectionError: refused", "local cap")
        assert health.status()[REDIS]["fallback"] == "local cap"  # type: ignore[index]
        health.recovered(REDIS)
        health.recovered(REDIS)
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert [r.levelname for r in seen.records] == ["WARNING", "INFO"]
    assert health.status() == {} and not health.is_degraded(DATABASE)
    assert health.outages_seen == {REDIS: 1}
