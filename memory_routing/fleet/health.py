"""Which shared server is degraded now, said once per outage.

Every user of PostgreSQL or Redis reports here when a call to it fails or succeeds again. The
first failure of an outage logs one warning, the recovery one info line; `/health` and
`/memory-routing/info` show `status()`. Thread-safe: the reports come from the writer and recall
threads and from the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

DATABASE = "database"
REDIS = "redis"


@dataclass(frozen=True, slots=True)
class Outage:
    """A part that is down: since when (epoch seconds), why (the first error's class and message,
    never a URL or credential), and what the proxy does meanwhile."""

    since: float
    reason: str
    fallback: str


class FleetHealth:
    """The degraded parts of this proxy's shared servers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outages: dict[str, Outage] = {}
        self.outages_seen: dict[str, int] = {}

    def failed(self, part: str, reason: str, fallback: str) -> None:
        """`part` failed; the first report of an outage logs one warning."""
        with self._lock:
            if part in self._outages:
                return
            self._outages[part] = Outage(time.time(), reason, fallback)
            self.outages_seen[part] = self.outages_seen.get(part, 0) + 1
        log.warning("fleet: %s unavailable (%s): %s until it is back", part, reason, fallback)

    def recovered(self, part: str) -> None:
        """`part` works again; logs once when it had been down."""
        with self._lock:
            outage = self._outages.pop(part, None)
        if outage is not None:
            log.info("fleet: %s is back after %.1f s", part, time.time() - outage.since)

    def is_degraded(self, part: str) -> bool:
        return part in self._outages

    def status(self) -> dict[str, object]:
        """{part: {"since", "reason", "fallback"}} for the degraded parts; {} when all is well."""
        with self._lock:
            outages = dict(self._outages)
        return {part: {"since": round(o.since, 3), "reason": o.reason, "fallback": o.fallback}
                for part, o in sorted(outages.items())}
