"""The proxy's mitmproxy addons, one per module of this package, and the pipeline that
``addon.py`` hands to mitmproxy, wired to one shared config (addons.routing_config).

The stages are mitmproxy addons, each with one job; mitmproxy sees one object, an
``AddonPipeline`` (mitm.pipeline) that calls them in this order (its docstring says why:
dispatch cost).
"""

from __future__ import annotations

from memory_routing.addons.call_log import CallLog
from memory_routing.addons.cloudflare_guard import CloudflareGuard
from memory_routing.addons.gateway_auth import GatewayAuth
from memory_routing.addons.heap_freeze import HeapFreeze
from memory_routing.mitm.pipeline import AddonPipeline
from memory_routing.addons.in_flight import InFlightLimiter
from memory_routing.addons.intercept_scope import InterceptScope
from memory_routing.addons.listen_guard import ListenGuard
from memory_routing.addons.error_pages import ErrorPageOverrides
from memory_routing.addons.proxyauth_secret import ProxyAuthSecret
from memory_routing.addons.local_endpoints import LocalEndpoints
from memory_routing.addons.local_stores import LocalStores
from memory_routing.addons.shared_servers import SharedServers
from memory_routing.addons.usage_log import UsageLog
from memory_routing.addons.memory import EmbeddedMemory
from memory_routing.addons.litellm_loading import LiteLLMLoading
from memory_routing.addons.router import ModelRouter
from memory_routing.llm.providers import ProviderResolver
from memory_routing.addons.request_limits import RequestLimits
from memory_routing.routing.planner import RoutePlanner
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.upstream_cookies import UpstreamCookies
from memory_routing.addons.large_body_offload import LargeBodyOffload
from memory_routing.addons.upstream_failures import UpstreamFailures
from memory_routing.addons.upstream_answers import UpstreamAnswerCheck


def create_addons() -> list[object]:
    return [AddonPipeline(create_stages())]


def create_stages() -> list[object]:
    routing = RoutingConfig()
    shared = SharedServers(routing)
    cookies = UpstreamCookies(shared=shared)
    limiter = InFlightLimiter(shared)
    stores = LocalStores(shared)
    router = ModelRouter(routing, RoutePlanner(ProviderResolver()))
    memory = EmbeddedMemory(routing, stores)
    pages = ErrorPageOverrides()  # mitmproxy's HTML error pages, replaced in the client's shape
    litellm_loading = LiteLLMLoading(routing)
    calls = CallLog()
    usage = UsageLog(stores, calls)
    # Order matters: options are checked and the config loaded before anything answers; the
    # gateway's credentials and the size limits are checked before anything is read from a
    # request; the local endpoints answer before the router rewrites; cookies are added and a
    # slot taken for the rewritten upstream; Cloudflare's pages are recognised after the router
    # chose to stream; the upstream watchdog starts counting once a request has its slot. The
    # memory injects into the client's own body before the router translates it, and reads the
    # answer (memory.answers) after the router has translated it back.
    # LiteLLM loads in a thread once the proxy runs: model calls wait for it before the router.
    # The call's record is written last, when every other stage is done with the call.
    return [
        ProxyAuthSecret(),  # before ListenGuard: proxyauth from a file/env counts as authentication
        ListenGuard(),
        routing,
        shared,  # opened when the config first loads (RoutingConfig tells it)
        InterceptScope(routing),
        GatewayAuth(),
        RequestLimits(routing, pages),
        stores,
        usage,
        LocalEndpoints(
            routing, status_sources={"cookies": cookies.status, "in_flight": limiter.status}, stores=stores,
            memory_status=memory.status, litellm_status=litellm_loading.status, shared=shared,
            usage_status=usage.status,
        ),
        litellm_loading,
        LargeBodyOffload(routing),  # a large body is read off the loop before anyone parses it
        UpstreamAnswerCheck(),  # an upstream's HTML page becomes an error before memory reads the answer
        memory,
        router,
        memory.answers,
        cookies,
        limiter,
        CloudflareGuard(),
        UpstreamFailures(pages, routing),
        HeapFreeze(),
        calls,
    ]
