"""ErrorPageOverrides: mitmproxy's page renderers answer with the registered answer, once."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.proxy.layers.http import _http1, _http2

from memory_routing.addons import error_pages
from memory_routing.addons.error_pages import ErrorPageOverrides


@pytest.fixture
def pages():
    overrides = ErrorPageOverrides()
    overrides.install()
    try:
        yield overrides
    finally:
        overrides.uninstall()


def test_registered_answer_replaces_mitmproxys_page_once(pages: ErrorPageOverrides):
    message = "Failed to connect: " + "x" * 3  # a fresh string, as mitmproxy makes them
    pages.register(message, http.Response.make(504, b'{"error": {}}', {"content-type": "application/json"}))
    page = _http1.make_error_response(502, message)
    assert page.startswith(b"HTTP/1.1 504") and page.endswith(b'{"error": {}}') and b"connection: close" in page
    assert b"<html" in _http1.make_error_response(502, message)  # used up: mitmproxy's page again


def test_equal_texts_of_other_failures_are_not_matched(pages: ErrorPageOverrides):
    pages.register("".join(["server closed ", "connection"]), http.Response.make(502, b"json"))
    assert b"<html" in _http1.make_error_response(502, "server closed connection")


def test_constant_texts_are_served_in_arrival_order_and_go_stale(pages: ErrorPageOverrides, monkeypatch):
    message = "server closed connection"
    first, second = http.Response.make(502, b"first"), http.Response.make(502, b"second")
    pages.register(message, first)
    pages.register(message, second)
    assert _http2.format_error(502, message) == b"first"
    assert _http2.format_error(502, message) == b"second"
    monkeypatch.setattr(error_pages, "STALE_SECONDS", -1.0)
    pages.register(message, first)
    assert b"<html" in _http2.format_error(502, message)  # never handed to a later failure


def test_uninstall_restores_mitmproxys_renderers():
    original = _http1.make_error_response, _http2.format_error
    overrides = ErrorPageOverrides()
    overrides.install()
    assert _http1.make_error_response is not original[0]
    overrides.uninstall()
    assert (_http1.make_error_response, _http2.format_error) == original
