"""Addon that keeps the cookies routed upstreams set (Cloudflare's) and sends them back."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from memory_routing.cloudflare.cookie_jar import CLOUDFLARE_COOKIE_NAMES, MACHINE_SCOPE, UpstreamCookieJar
from memory_routing.flow_state import Route, route_of

logger = logging.getLogger(__name__)

DEFAULT_FILE_NAME = "memory-routing-cookies.json"
SCOPES = ("machine", "user")


class UpstreamCookies:
    def __init__(self) -> None:
        self.jar = UpstreamCookieJar()
        self.path: Path | None = None
        self.per_user = False

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_cookie_names", Sequence[str], list(CLOUDFLARE_COOKIE_NAMES),
            "Cookie names kept from routed upstream answers and sent back (Cloudflare's by default).",
        )
        loader.add_option(
            "memory_routing_cookie_scope", str, "machine",
            "One cookie jar for the machine, or one per memory user id (a shared team proxy).",
            choices=SCOPES,
        )
        loader.add_option(
            "memory_routing_cookie_file", str, "",
            f"Where the jar persists; default <confdir>/{DEFAULT_FILE_NAME}. 'none' keeps it in memory only.",
        )

    def configure(self, updated) -> None:
        if "memory_routing_cookie_scope" in updated:
            self.per_user = ctx.options.memory_routing_cookie_scope == "user"
        if {"memory_routing_cookie_names", "memory_routing_cookie_file", "confdir"} & set(updated):
            self.jar = UpstreamCookieJar(ctx.options.memory_routing_cookie_names)
            self.path = self._jar_path()
            if self.path is not None:
                self._load(self.path)

    def request(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)
        if route is None or flow.response is not None or not self.jar.holds(self._scope(route)):
            return
        client_cookies = "; ".join(flow.request.headers.get_all("cookie")) or None
        header = self.jar.cookie_header(flow.request.url, self._scope(route), client_cookies)
        if header and header != client_cookies:
            flow.request.headers["cookie"] = header

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)
        if route is None or flow.response is None:
            return
        set_cookies = [value.decode("utf-8", "surrogateescape") for name, value in flow.response.headers.fields
                       if name.lower() == b"set-cookie"]
        if set_cookies and self.jar.store(flow.request.url, self._scope(route), set_cookies):
            self._save()

    def status(self) -> list[dict[str, object]]:
        return [
            {"scope": c.scope, "name": c.name, "domain": c.domain, "path": c.path, "secure": c.secure,
             "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.expires)) if c.expires else None}
            for c in self.jar.describe()
        ]

    def _scope(self, route: Route) -> str:
        return route.user_id if self.per_user else MACHINE_SCOPE

    def _jar_path(self) -> Path | None:
        option = ctx.options.memory_routing_cookie_file
        if option == "none":
            return None
        if option:
            return Path(os.path.expanduser(option))
        return Path(os.path.expanduser(ctx.options.confdir)) / DEFAULT_FILE_NAME

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            count = self.jar.load(path)
        except (OSError, ValueError) as e:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                path.replace(aside)
            except OSError as move_error:
                raise exceptions.OptionsError(f"{path}: unreadable cookie jar ({e}) that cannot be moved aside: {move_error}") from None
            logger.warning(f"memory-routing: {path} is not a usable cookie jar ({e}); moved it to {aside.name}, starting empty")
            return
        logger.info(f"memory-routing: loaded {count} cookies from {path}")

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.jar.save(self.path)
        except OSError as e:
            logger.warning(f"memory-routing: cannot save the cookie jar to {self.path}: {e}")
