"""Addon answering the proxy's own endpoints; these requests are never forwarded."""

from __future__ import annotations

import time
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from memory_routing import __version__
from memory_routing.routing.classify import InvalidUserId
from memory_routing.local.bodies import (
    anthropic_models_body,
    health_body,
    openai_models_body,
    routing_info_body,
)
from memory_routing.wire.protocol import ClientProtocol, detect_protocol
from memory_routing.wire.responses import error_response, json_response
from memory_routing.config.holder import RoutingConfig

# Through the forward proxy the endpoints live on this name. ".localhost" is reserved
# (RFC 6761): it never resolves to a real server, so no request to it can leak upstream.
RESERVED_HOST = "memory-routing.localhost"

HEALTH_PATH = "/health"
INFO_PATH = "/memory-routing/info"
MODELS_PATH = "/v1/models"


def is_gateway(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, ReverseMode)


class LocalEndpoints:
    def __init__(
        self,
        routing: RoutingConfig,
        status_sources: dict[str, Callable[[], object]] | None = None,
        litellm_loaded: Callable[[], bool] | None = None,
    ) -> None:
        self.routing = routing
        # /health says whether LiteLLM's model table is loaded yet (model calls wait for it).
        self.litellm_loaded = litellm_loaded
        # Live state of other addons shown under "upstreams" in /memory-routing/info.
        self.status_sources = status_sources or {}
        self.started_at = time.time()
        self.routes: dict[str, Callable[[http.HTTPFlow], http.Response]] = {
            HEALTH_PATH: self.health,
            INFO_PATH: self.routing_info,
            MODELS_PATH: self.models,
        }

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        on_gateway = is_gateway(flow)
        if not on_gateway and flow.request.host.lower() != RESERVED_HOST:
            return
        path = flow.request.path.split("?", 1)[0].rstrip("/") or "/"
        handler = self.routes.get(path)
        if handler is None:
            if not on_gateway:
                # Nothing exists behind the reserved name, so an unknown path ends here.
                flow.response = error_response(flow, 404, f"no local endpoint {path}; try {', '.join(self.routes)}")
            return
        if flow.request.method not in ("GET", "HEAD"):
            flow.response = error_response(flow, 405, f"{path} answers GET only")
            return
        flow.response = handler(flow)
        flow.metadata["memory_routing.local_endpoint"] = path

    def health(self, flow: http.HTTPFlow) -> http.Response:
        body = health_body(__version__, self.started_at, self.routing.loaded_at, self.routing.last_error)
        if self.litellm_loaded is not None:
            body["litellm_loaded"] = self.litellm_loaded()
        return json_response(200, body)

    def routing_info(self, flow: http.HTTPFlow) -> http.Response:
        assert self.routing.classifier is not None
        try:
            identity = self.routing.classifier.classify(flow.request.headers)
        except InvalidUserId as e:
            return error_response(flow, 400, str(e))
        listener = "gateway" if is_gateway(flow) else "forward"
        body = routing_info_body(identity, flow.request.headers.items(multi=True), listener, self.routing.summary)
        body["upstreams"] = {name: source() for name, source in self.status_sources.items()}
        return json_response(200, body)

    def models(self, flow: http.HTTPFlow) -> http.Response:
        assert self.routing.config is not None
        created = int(self.routing.loaded_at)
        if detect_protocol(flow.request.path, flow.request.headers) is ClientProtocol.ANTHROPIC:
            return json_response(200, anthropic_models_body(self.routing.config, created))
        return json_response(200, openai_models_body(self.routing.config, created))
