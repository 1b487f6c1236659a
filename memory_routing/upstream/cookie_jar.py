"""Cookies that upstreams set (Cloudflare's, by default), kept per scope and sent back.

Pure logic on ``http.cookiejar``: its DefaultCookiePolicy does the RFC 6265 matching (domain and
host-only cookies, paths, ``Secure`` only over https, ``Max-Age`` over ``Expires``, expiry).
Persistence is a JSON file written atomically with mode 0600.

At most ``limit`` scopes (jars) stay in memory, least recently used first out: a team proxy with
one jar per user id must not grow without bound. A jar pushed out is written to the file (its
snapshot kept until then) and read back from it when its scope comes back, so nothing is lost.
Writing and reading the file are plain functions (``write_changes``, ``read_scope``) meant for a
worker thread; what they are handed (``JarChanges``) is a snapshot taken on the caller's side.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Iterable, Mapping
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


Entry = dict[str, Any]  # one cookie as the file stores it (its scope, its fields, ``rest``)


@dataclass(frozen=True)
class JarChanges:
    """What the file must say for some scopes: their cookies now (an empty tuple removes a scope).

    ``evicted`` names the scopes among them whose jars left memory; once written, they are read
    back from the file when they come back.
    """

    scopes: Mapping[str, tuple[Entry, ...]]
    evicted: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.scopes)


class UpstreamCookieJar:
    def __init__(
        self, names: Iterable[str] = CLOUDFLARE_COOKIE_NAMES, limit: int | None = None, *, persistent: bool = True
    ) -> None:
        """``persistent``: a file backs the jar. Without one, a jar pushed out of memory is gone
        (its cookies are set again by the upstream's next answer)."""
        self.policy = _NamedCookiesPolicy(names)
        self.limit = limit
        self.persistent = persistent
        self._jars: OrderedDict[str, http.cookiejar.CookieJar] = OrderedDict()
        self._changed: set[str] = set()  # resident scopes whose cookies differ from the file's
        self._evicted_unsaved: dict[str, tuple[Entry, ...]] = {}
        self._in_file: set[str] = set()  # scopes not in memory whose cookies only the file holds

    def _jar(self, scope: str) -> http.cookiejar.CookieJar:
        jar = self._jars.get(scope)
        if jar is None:
            jar = self._jars[scope] = http.cookiejar.CookieJar(self.policy)
            self._in_file.discard(scope)
            self._evict_over_limit()
        else:
            self._jars.move_to_end(scope)
        return jar

    def _evict_over_limit(self) -> None:
        while self.limit is not None and len(self._jars) > self.limit:
            scope, jar = self._jars.popitem(last=False)
            if not self.persistent:
                continue
            if scope in self._changed:
                self._changed.discard(scope)
                self._evicted_unsaved[scope] = _entries(scope, jar)
            elif len(jar):
                self._in_file.add(scope)  # unchanged since the file was written or read

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._evict_over_limit()

    def resident(self, scope: str) -> bool:
        """Whether ``scope``'s cookies can be used now; False when they must first be read back
        from the file (``read_scope`` then ``restore``). A jar evicted but not yet written comes
        back from its snapshot here."""
        if scope in self._jars:
            return True
        entries = self._evicted_unsaved.pop(scope, None)
        if entries is not None:
            self.restore(scope, entries)
            self._changed.add(scope)  # the file may not have it yet
            return True
        return scope not in self._in_file

    def restore(self, scope: str, entries: Iterable[Entry]) -> None:
        """Bring a scope's jar back into memory from entries read from the file or a snapshot."""
        self._keep(self._jar(scope), entries)

    def _keep(self, jar: http.cookiejar.CookieJar, entries: Iterable[Entry]) -> None:
        now = int(time.time())
        for cookie in map(_cookie, entries):
            if cookie.name in self.policy.names and not cookie.is_expired(now):
                jar.set_cookie(cookie)

    @property
    def resident_count(self) -> int:
        return len(self._jars)

    def holds(self, scope: str) -> bool:
        """Whether any cookie is kept for ``scope`` (a cheap test before matching URLs)."""
        jar = self._jars.get(scope)
        return jar is not None and len(jar) > 0

    def store(self, url: str, scope: str, set_cookie_values: list[str]) -> bool:
        """Keep the allowed cookies an upstream response set; True when the jar changed."""
        if not set_cookie_values:
            return False
        if not self.resident(scope):
            # A new jar would hide the file's cookies for this scope, and the next write drop them.
            raise LookupError(f"the cookies of scope {scope!r} must be read back from the file first")
        jar = self._jar(scope)
        before = self._fingerprint(jar)
        jar.extract_cookies(_Response(set_cookie_values), urllib.request.Request(url))  # type: ignore[arg-type]
        if self._fingerprint(jar) == before:
            return False
        if self.persistent:
            self._changed.add(scope)
        return True

    def cookie_header(self, url: str, scope: str, client_cookie_header: str | None) -> str | None:
        """The Cookie header to send to ``url``: the client's own cookies, plus the jar's
        matching cookies whose names the client did not send itself."""
        jar = self._jars.get(scope)
        if jar is None:
            return client_cookie_header
        self._jars.move_to_end(scope)
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

    def scope_entries(self, scope: str) -> tuple[Entry, ...]:
        """The cookies of a jar in memory, as the file stores them (none for a jar not in memory)."""
        jar = self._jars.get(scope)
        return _entries(scope, jar) if jar is not None else ()

    def resident_scopes(self) -> list[str]:
        return list(self._jars)

    def replace_scope(self, scope: str, entries: Iterable[Entry]) -> bool:
        """Make a jar hold exactly ``entries`` (the fleet's copy, through Redis), keeping only
        the allowed names and the unexpired; True when the jar changed (and the file must be
        written). The caller checks ``resident`` first: a jar only in the file is left alone."""
        jar = self._jar(scope)
        before = self._fingerprint(jar)
        jar.clear()
        self._keep(jar, [entry for entry in entries if _is_cookie(entry)])  # another proxy's bad entry is skipped
        if self._fingerprint(jar) == before:
            return False
        if self.persistent:
            self._changed.add(scope)
        return True

    def describe(self) -> list[CookieInfo]:
        """The cookies in memory (jars evicted to the file are not listed)."""
        return [
            CookieInfo(scope, cookie.name, cookie.domain, cookie.path, cookie.secure, cookie.expires)
            for scope, jar in sorted(self._jars.items())
            for cookie in jar
        ]

    # --- persistence -----------------------------------------------------------------------

    @property
    def has_changes(self) -> bool:
        return bool(self._changed or self._evicted_unsaved)

    def take_changes(self) -> JarChanges:
        """Snapshot what the file lacks (cheap: only changed scopes); hand it to ``write_changes``,
        then report the outcome with ``saved`` or ``save_failed``."""
        scopes = {scope: _entries(scope, self._jars[scope]) for scope in self._changed}
        scopes.update(self._evicted_unsaved)
        self._changed.clear()
        return JarChanges(scopes, frozenset(self._evicted_unsaved))

    def saved(self, changes: JarChanges) -> None:
        for scope in changes.evicted:
            # Only if it was not evicted again (a newer snapshot) or brought back meanwhile.
            if self._evicted_unsaved.get(scope) is changes.scopes[scope]:
                del self._evicted_unsaved[scope]
                if changes.scopes[scope]:
                    self._in_file.add(scope)

    def save_failed(self, changes: JarChanges) -> None:
        for scope, entries in changes.scopes.items():
            if scope in self._jars:
                self._changed.add(scope)
            elif scope not in self._evicted_unsaved:
                # Pushed out while this write ran, counted as saved: the file never got it.
                self._in_file.discard(scope)
                self._evicted_unsaved[scope] = entries

    def load(self, path: Path) -> int:
        """Load a saved jar at start; raises ValueError for a file that is not one. Returns the
        count of cookies read. Scopes beyond the limit stay in the file until they come back."""
        by_scope: dict[str, list[Entry]] = {}
        for entry in _read_entries(path):
            by_scope.setdefault(str(entry.get("scope")), []).append(entry)
        loaded = 0
        for scope, entries in by_scope.items():
            cookies = [_cookie(entry) for entry in entries]  # every entry is checked, loaded or not
            if self.limit is not None and len(self._jars) >= self.limit:
                self._in_file.add(scope)
                continue
            now = int(time.time())
            jar = self._jar(scope)
            for cookie in cookies:
                if cookie.name in self.policy.names and not cookie.is_expired(now):
                    jar.set_cookie(cookie)
                    loaded += 1
        return loaded

    @staticmethod
    def _fingerprint(jar: http.cookiejar.CookieJar) -> frozenset[tuple[Any, ...]]:
        return frozenset((c.domain, c.path, c.name, c.value, c.expires, c.secure) for c in jar)


def _entries(scope: str, jar: http.cookiejar.CookieJar) -> tuple[Entry, ...]:
    return tuple(
        # typeshed omits Cookie._rest, the only way to list a cookie's nonstandard attributes.
        {"scope": scope, **{name: getattr(cookie, name) for name in _COOKIE_FIELDS}, "rest": dict(cookie._rest)}  # type: ignore[attr-defined]
        for cookie in jar
    )


def _cookie(entry: Entry) -> http.cookiejar.Cookie:
    try:
        return http.cookiejar.Cookie(**{name: entry[name] for name in _COOKIE_FIELDS}, rest=dict(entry.get("rest") or {}))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed cookie entry: {e}") from None


def _is_cookie(entry: Entry) -> bool:
    try:
        _cookie(entry)
    except ValueError:
        return False
    return True


def _read_entries(path: Path) -> list[Entry]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or payload.get("version") != _FILE_VERSION:
        raise ValueError("not a memory-routing cookie jar")
    entries = payload.get("cookies", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) and "scope" in entry for entry in entries):
        raise ValueError("malformed cookie entries")
    return entries


def read_scope(path: Path, scope: str) -> list[Entry]:
    """The entries the file holds for ``scope`` (blocking I/O: call it off the event loop)."""
    if not path.exists():
        return []
    return [entry for entry in _read_entries(path) if entry["scope"] == scope]


def write_changes(path: Path, changes: JarChanges) -> None:
    """Merge ``changes`` into the file, dropping expired cookies; atomic (temporary file, fsync,
    rename) and readable by the owner only. Blocking I/O: call it off the event loop."""
    kept = [entry for entry in _read_entries(path) if entry["scope"] not in changes.scopes] if path.exists() else []
    now = time.time()
    payload = {
        "version": _FILE_VERSION,
        "cookies": [
            entry for entry in [*kept, *(entry for entries in changes.scopes.values() for entry in entries)]
            if entry.get("expires") is None or entry["expires"] > now
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
