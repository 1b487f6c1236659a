"""Addon owning the fleet's shared servers: the PostgreSQL pool and Redis URL from `storage`.

Opened once, when the config is first loaded; a reload that changes `storage` is told to need a
restart (moving memories and usage to another database under running calls would split them).
Without `storage`, nothing here is opened and every part stays in this proxy's local file.
Other addons hold this object and read `database` / `redis_url` / `health` when they use them.
"""

from __future__ import annotations

import logging

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.config.schema import StorageSettings
from memory_routing.fleet.health import FleetHealth
from memory_routing.fleet.identity import proxy_name, shown_url
from memory_routing.fleet.postgres import FleetDatabase

log = logging.getLogger(__name__)


class SharedServers:
    """The fleet's PostgreSQL (a migrated pool) and Redis (its URL), and which part is degraded."""

    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.health = FleetHealth()
        self.settings: StorageSettings | None = None
        self.database: FleetDatabase | None = None
        self.redis_url: str | None = None
        self.proxy_name = proxy_name(None)
        routing.subscribe(self._config_loaded)

    def _config_loaded(self) -> None:
        config = self.routing.config
        if config is None:
            return
        if self.settings is None:
            self._open(config.storage)
        elif config.storage != self.settings:
            log.warning("%s: storage changed; the new storage settings take effect when the proxy restarts",
                        config.source)

    def _open(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.proxy_name = proxy_name(settings.proxy_name)
        if settings.uses_database:
            assert settings.database_url is not None and settings.database_url.value is not None
            self.database = FleetDatabase(settings.database_url.value, health=self.health,
                                          application_name=f"memory-routing {self.proxy_name}"[:63])
            self.database.start()  # in the background: a proxy never waits for its database
            log.info("fleet: memories and usage rows in %s", shown_url(settings.database_url.value))
        if settings.uses_redis:
            assert settings.redis_url is not None
            self.redis_url = settings.redis_url.value
            log.info("fleet: cookies and the in-flight cap in %s", shown_url(self.redis_url or ""))

    def done(self) -> None:
        if self.database is not None:
            self.database.close()
            self.database = None

    def health_status(self) -> dict[str, object]:
        """For /health: {} when every configured shared part works, else the degraded parts."""
        return self.health.status()

    def status(self) -> dict[str, object]:
        """For /memory-routing/info: which servers (URLs without credentials), and their state."""
        settings = self.settings or StorageSettings()
        status: dict[str, object] = {"proxy": self.proxy_name, "degraded": self.health.status()}
        if settings.uses_database and settings.database_url is not None and settings.database_url.value:
            status["database"] = {"url": shown_url(settings.database_url.value),
                                  **(self.database.status() if self.database is not None else {})}
        if self.redis_url:
            status["redis"] = {"url": shown_url(self.redis_url)}
        return status
