"""Addon recording every model call as a usage row in the local store (for the dashboard).

The last stage hands each call's record to ``CallLog.sinks``; the UsageRecorder queues it and its
thread writes it to ``LocalStores.usage`` (the fleet's PostgreSQL when `storage.database_url` is
set; rows it cannot take meanwhile wait in a queue of storage.outage_queue_rows). Each row names
the proxy that served the call. Rows older than the retention are deleted at start and daily.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions

from memory_routing.dashboard.recorder import UsageRecorder
from memory_routing.addons.call_log import CallLog
from memory_routing.addons.local_stores import LocalStores

log = logging.getLogger(__name__)

RETENTION_OPTION = "memory_routing_usage_retention_days"
DRAIN_TIMEOUT_S = 10.0


class UsageLog:
    def __init__(self, stores: LocalStores, calls: CallLog) -> None:
        self.stores = stores
        shared = stores.shared
        self.recorder = UsageRecorder(lambda: stores.usage,
                                      proxy_name=(lambda: shared.proxy_name) if shared is not None else str)
        calls.sinks.append(self.recorder.submit)
        # Queued rows go into the file they belong to before it is closed (shutdown or a new path).
        stores.before_close.append(self._drain)

    def load(self, loader) -> None:
        loader.add_option(
            RETENTION_OPTION, int, 90,
            "Days the dashboard's usage rows (one per model call) are kept in the local store.",
        )

    def configure(self, updated) -> None:
        if RETENTION_OPTION in updated:
            days = ctx.options.memory_routing_usage_retention_days
            if days <= 0:
                raise exceptions.OptionsError(f"{RETENTION_OPTION} must be a number of days > 0, not {days}")
            self.recorder.retention_days = days

    def running(self) -> None:
        settings = self.stores.shared.settings if self.stores.shared is not None else None
        if settings is not None:
            self.recorder.outage_capacity = settings.outage_queue_rows
        self.recorder.start()

    def status(self) -> dict[str, object]:
        """The writer's counts for /memory-routing/info (queued, written, dropped; rows waiting for
        the fleet's database and those dropped because its queue was full)."""
        return self.recorder.status()

    def done(self) -> None:
        if not self.recorder.close(DRAIN_TIMEOUT_S):
            log.warning("usage: the writer did not finish within %.0f s; calls still queued are lost",
                        DRAIN_TIMEOUT_S)

    def _drain(self) -> None:
        if not self.recorder.flush(DRAIN_TIMEOUT_S):
            log.warning("usage: calls still queued after %.0f s are not stored", DRAIN_TIMEOUT_S)
