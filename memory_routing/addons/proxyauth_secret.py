"""Addon that sets mitmproxy's ``proxyauth`` from a file or an environment variable.

``--set proxyauth=user:password`` puts the password in the shell history, in ``ps`` and in
``make``'s echo of the command; a file (``memory_routing_proxyauth_file``) or the environment
(``MEMORY_ROUTING_PROXYAUTH``) does neither. Either holds what ``proxyauth`` takes
(``user:password``, ``@htpasswd-file``, ``ldap:…``); mitmproxy's own ProxyAuth addon checks it.
"""

from __future__ import annotations

import os

from mitmproxy import ctx
from mitmproxy import exceptions

ENV_VAR = "MEMORY_ROUTING_PROXYAUTH"
OPTION = "memory_routing_proxyauth_file"


class ProxyAuthSecret:
    def __init__(self, environ: os._Environ[str] | dict[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self._applied = False

    def load(self, loader) -> None:
        loader.add_option(
            OPTION, str, "",
            f"File holding the proxyauth value (user:password, @htpasswd-file, ldap:…), kept out of the "
            f"command line; the environment variable {ENV_VAR} does the same.",
        )

    def configure(self, updated) -> None:
        if OPTION not in updated and self._applied:
            return
        self._applied = True
        value, source = self._read()
        if value is None:
            return
        if ctx.options.proxyauth and ctx.options.proxyauth != value:
            raise exceptions.OptionsError(
                f"memory-routing: proxyauth is given twice (on the command line and by {source}): keep one"
            )
        # Never echo the value: a wrong one is reported by mitmproxy's ProxyAuth by its shape.
        ctx.options.update(proxyauth=value)

    def _read(self) -> tuple[str | None, str]:
        path = ctx.options.memory_routing_proxyauth_file
        if path:
            path = os.path.expanduser(path)
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError as e:
                raise exceptions.OptionsError(f"{OPTION}: {path}: cannot read: {e.strerror or e}") from None
            if not value or "\n" in value:
                raise exceptions.OptionsError(f"{OPTION}: {path}: must hold one line (user:password, @htpasswd-file, ldap:…)")
            return value, path
        value = self.environ.get(ENV_VAR, "").strip()
        return (value, ENV_VAR) if value else (None, "")
