"""Which flows are the proxy's to route (the one routed-call predicate, asked once per flow), and
the request's header index, shared by the stages through the flow's context.

A flow is a routed model call when it came to the gateway (mitmproxy's reverse mode) or to an
LLM host in forward mode, and its method and path are a model call's. The first stage that asks
records the answer in the flow's context; the others read it there.
"""

from __future__ import annotations

from collections.abc import Collection

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from memory_routing.flow_state import UNKNOWN, FlowContext, context_of
from memory_routing.wire.headers import HeaderIndex
from memory_routing.wire.model_calls import ModelCall, parse_model_call


def is_gateway(flow: http.HTTPFlow) -> bool:
    """The flow came to the gateway listener (mitmproxy's reverse mode)."""
    return isinstance(flow.client_conn.proxy_mode, ReverseMode)


def routed_call(flow: http.HTTPFlow, llm_hosts: Collection[str]) -> ModelCall | None:
    """The model call this flow makes, or None when it is not the proxy's to route."""
    context = context_of(flow)
    call = context.call
    if call is UNKNOWN:
        return _classify(flow, context, llm_hosts)
    return call


def _classify(flow: http.HTTPFlow, context: FlowContext, llm_hosts: Collection[str]) -> ModelCall | None:
    request = flow.request
    context.on_gateway = on_gateway = isinstance(flow.client_conn.proxy_mode, ReverseMode)
    call = None
    if on_gateway or request.host.lower() in llm_hosts:
        call = parse_model_call(request.method, request.path)
    context.call = call
    return call


def request_headers(flow: http.HTTPFlow) -> HeaderIndex:
    """The flow's request headers indexed, shared by the addons of one request until the headers
    change (mitmproxy replaces the fields tuple on every change; a lookup through its ``Headers``
    costs ~8-10 µs here, an index lookup well under one)."""
    fields = flow.request.headers.fields
    context = context_of(flow)
    known = context.headers
    if known is not None and known.fields is fields:
        return known
    index = context.headers = HeaderIndex(fields)
    return index
