"""Cookies that upstreams set (Cloudflare's, by default), kept per scope and sent back.

Pure logic on ``http.cookiejar``: its DefaultCookiePolicy does the RFC 6265 matching (domain and
host-only cookies, paths, ``Secure`` only over https, ``Max-Age`` over ``Expires``, expiry).
Persistence is a JSON file written atomically with mode 0600.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

# Cloudflare's bot-management and load-balancing cookies, meant to come back on later requests.
CLOUDFLARE_COOKIE_NAMES = ("__cf_bm", "cf_clearance", "_cfuvid", "__cfruid", "__cflb", "__cfwaitingroom")
MACHINE_SCOPE = "machine"
_FILE_VERSION = 1
_COOKIE_FIELDS = (
    "version", "name", "value", "port", "port_specified", "domain", "domain_specified",
    "domain_initial_dot", "path", "path_specified", "secure", "expires", "discard",
    "comment", "comment_url",
)


class _NamedCookiesPolicy(http.cookiejar.DefaultCookiePolicy):
    """The standard policy, storing only the cookie names we were asked to keep.

    A shared jar that kept arbitrary session cookies would replay one caller's session to another.
    """

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return cookie.name in self.names and super().set_ok(cookie, request)


class _Response:
    """The one thing http.cookiejar asks of a response: its Set-Cookie headers."""

    def __init__(self, set_cookie_values: Iterable[str]) -> None:
        self._headers = Message()
        for value in set_cookie_values:
            self._headers["Set-Cookie"] = value

    def info(self) -> Message:
        return self._headers


@dataclass(frozen=True)
class CookieInfo:
    """What may be shown about a stored cookie: everything but its value."""

    scope: str
    name: str
    domain: str
    path: str
    secure: bool
    expires: int | None


class UpstreamCookieJar:
    def __init__(self, names: Iterable[str] = CLOUDFLARE_COOKIE_NAMES) -> None:
        self.policy = _NamedCookiesPolicy(names)
        self._jars: dict[str, http.cookiejar.CookieJar] = {}

    def _jar(self, scope: str) -> http.cookiejar.CookieJar:
        jar = self._jars.get(scope)
        if jar is None:
            jar = self._jars[scope] = http.cookiejar.CookieJar(self.policy)
        return jar

    def holds(self, scope: str) -> bool:
        """Whether any cookie is kept for ``scope`` (a cheap test before matching URLs)."""
        jar = self._jars.get(scope)
        return jar is not None and len(jar) > 0

    def store(self, url: str, scope: str, set_cookie_values: list[str]) -> bool:
        """Keep the allowed cookies an upstream response set; True when the jar changed."""
        if not set_cookie_values:
            return False
        jar = self._jar(scope)
        before = self._fingerprint(jar)
        jar.extract_cookies(_Response(set_cookie_values), urllib.request.Request(url))  # type: ignore[arg-type]
        return self._fingerprint(jar) != before

    def cookie_header(self, url: str, scope: str, client_cookie_header: str | None) -> str | None:
        """The Cookie header to send to ``url``: the client's own cookies, plus the jar's
        matching cookies whose names the client did not send itself."""
        jar = self._jars.get(scope)
        if jar is None:
            return client_cookie_header
        request = urllib.request.Request(url)
        jar.add_cookie_header(request)
        from_jar = request.get_header("Cookie")
        if not from_jar:
            return client_cookie_header
        if not client_cookie_header:
            return from_jar
        client_names = {part.split("=", 1)[0].strip() for part in client_cookie_header.split(";")}
        extra = [part.strip() for part in from_jar.split(";") if part.split("=", 1)[0].strip() not in client_names]
        return "; ".join([client_cookie_header, *extra]) if extra else client_cookie_header

    def clear_expired(self) -> bool:
        changed = False
        for jar in self._jars.values():
            before = len(jar)
            jar.clear_expired_cookies()
            changed |= len(jar) != before
        return changed

    def describe(self) -> list[CookieInfo]:
        return [
            CookieInfo(scope, cookie.name, cookie.domain, cookie.path, cookie.secure, cookie.expires)
            for scope, jar in sorted(self._jars.items())
            for cookie in jar
        ]

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically (temporary file + rename), readable by the owner only."""
        now = time.time()
        payload = {
            "version": _FILE_VERSION,
            "cookies": [
                {"scope": scope, **{name: getattr(cookie, name) for name in _COOKIE_FIELDS}, "rest": cookie._rest}
                for scope, jar in self._jars.items()
                for cookie in jar
                if not cookie.is_expired(now)
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(payload, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load(self, path: Path) -> int:
        """Load a saved jar; raises ValueError for a file that is not one. Returns the count."""
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("version") != _FILE_VERSION:
            raise ValueError("not a memory-routing cookie jar")
        loaded = 0
        now = time.time()
        for entry in payload.get("cookies", []):
            try:
                cookie = http.cookiejar.Cookie(
                    **{name: entry[name] for name in _COOKIE_FIELDS}, rest=dict(entry.get("rest") or {})
                )
                scope = str(entry["scope"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"malformed cookie entry: {e}") from None
            if cookie.name in self.policy.names and not cookie.is_expired(now):
                self._jar(scope).set_cookie(cookie)
                loaded += 1
        return loaded

    @staticmethod
    def _fingerprint(jar: http.cookiejar.CookieJar) -> frozenset[tuple[Any, ...]]:
        return frozenset((c.domain, c.path, c.name, c.value, c.expires, c.secure) for c in jar)
