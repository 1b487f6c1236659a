"""Addon that applies mitmproxy's ``proxyauth`` to the gateway without taking the API key's header.

On a reverse-mode listener mitmproxy's ProxyAuth reads ``Authorization``, which is where every
OpenAI-style client puts its API key: the two would collide, and a client could never pass
both. On the gateway this addon checks the same credentials (the same validator: user:pass,
htpasswd or LDAP) from ``Proxy-Authorization: Basic …`` instead, and leaves ``Authorization``
to the client. mitmproxy's ProxyAuth is told (through its ``authenticated`` map, see mitm.internals)
that gateway connections are taken care of; the forward proxy is left to it entirely.
"""

from __future__ import annotations

import logging
import weakref

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import http
from mitmproxy.addons.proxyauth import parse_http_basic_auth
from mitmproxy.proxy.mode_specs import ReverseMode

from memory_routing.mitm.flows import is_gateway
from memory_routing.mitm.internals import mark_authenticated
from memory_routing.wire.responses import error_response, fail_closed

logger = logging.getLogger(__name__)

CREDENTIALS_HEADER = "proxy-authorization"
REALM = "memory-routing"
# What mitmproxy's ProxyAuth records for a gateway connection: this addon checks each request.
_HANDLED_HERE = ("(gateway: checked per request by memory-routing)", "")


class GatewayAuth:
    def __init__(self) -> None:
        self._marked: weakref.WeakSet[connection.Client] = weakref.WeakSet()

    def client_connected(self, client: connection.Client) -> None:
        proxyauth = self._proxyauth()
        if proxyauth is not None and proxyauth.validator is not None and isinstance(client.proxy_mode, ReverseMode):
            mark_authenticated(proxyauth, client, _HANDLED_HERE)
            self._marked.add(client)

    @fail_closed(401, "the proxy could not check this request's credentials; its log has the details")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.client_conn not in self._marked or not is_gateway(flow):
            return
        proxyauth = self._proxyauth()
        validator = proxyauth.validator if proxyauth is not None else None
        if validator is None:  # proxyauth was switched off while the connection was open
            flow.metadata.pop("proxyauth", None)
            return
        user = self._valid_user(validator, flow.request.headers.get(CREDENTIALS_HEADER, ""))
        if user is None:
            flow.metadata.pop("proxyauth", None)
            flow.response = error_response(
                flow, 401,
                "this gateway requires proxy authentication: send 'Proxy-Authorization: Basic "
                "base64(user:password)' (your API key stays in its usual header)",
                headers={"www-authenticate": f'Basic realm="{REALM}"'},
            )
            return
        # The password is not kept: flow metadata is shown in mitmweb and saved with flows.
        flow.metadata["proxyauth"] = (user, "")
        del flow.request.headers[CREDENTIALS_HEADER]

    @staticmethod
    def _valid_user(validator, value: str) -> str | None:
        try:
            _scheme, user, password = parse_http_basic_auth(value)
            return user if validator(user, password) else None
        except Exception:  # malformed, or the LDAP server failed: not authenticated either way
            return None

    @staticmethod
    def _proxyauth():
        return ctx.master.addons.get("proxyauth")
