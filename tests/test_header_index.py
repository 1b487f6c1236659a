"""request_headers: one index of a request's headers per flow, until the headers change."""

from __future__ import annotations

from mitmproxy.test import tflow

from memory_routing.mitm.flows import request_headers


def test_one_index_per_flow_until_the_headers_change():
    flow = tflow.tflow()
    flow.request.headers["User-Agent"] = "claude-cli/2.0"
    index = request_headers(flow)
    assert request_headers(flow) is index  # shared by the addons of one request
    assert index.get("user-agent") == "claude-cli/2.0"
    flow.request.headers["x-memory-mode"] = "off"
    changed = request_headers(flow)
    assert changed is not index and "x-memory-mode" in changed
    del flow.request.headers["user-agent"]
    assert request_headers(flow).get("user-agent") is None
    assert request_headers(tflow.tflow()) is not changed  # per flow


def test_replaced_fields_drops_by_name_and_prefix_in_any_case_and_appends_in_order():
    from memory_routing.wire.headers import replaced_fields

    fields = ((b"Host", b"a"), (b"X-SM-User-Id", b"forged"), (b"Content-Length", b"3"), (b"accept", b"*/*"),
              (b"content-length", b"4"))
    assert replaced_fields(fields, {b"content-length"}, ((b"content-length", b"9"),)) == (
        (b"Host", b"a"), (b"X-SM-User-Id", b"forged"), (b"accept", b"*/*"), (b"content-length", b"9"))
    assert replaced_fields(fields, {b"host"}, drop_prefix=b"x-sm-") == (
        (b"Content-Length", b"3"), (b"accept", b"*/*"), (b"content-length", b"4"))
    assert replaced_fields(fields, frozenset()) == fields
