"""Headless Chromium for tests: Debian's `chromium` driven by Playwright (no browser download).

``chromium_page(tmp_path)`` yields a ``BrowserPage``: a Playwright page in a fresh profile that
records every request the browser makes for it, every console error and every dialog.
Tests skip, with the reason, when Playwright or the chromium binary is missing
(``make test`` installs Debian's package when it runs as root).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# Flags that keep the browser's own background traffic (updates, sync, field trials, QUIC
# probes) off, so everything it sends comes from the page under test.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
NAVIGATION_TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    configured = os.environ.get("MEMORY_ROUTING_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


def require_chromium() -> str:
    """The chromium binary, or a skip saying how to get it."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: install the test extra (make test does)")
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary: `apt-get install chromium` (make test does it when run as root), "
                    "or set MEMORY_ROUTING_CHROMIUM=/path/to/chromium")
    return path


@dataclass
class BrowserPage:
    page: object  # playwright.sync_api.Page
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def requests_leaving(self, origin: str) -> list[str]:
        """Recorded request URLs not on ``origin`` (scheme://host:port); data: URLs stay local."""
        wanted = urlsplit(origin)
        return [
            url for url in self.requests
            if not url.startswith("data:")
            and (urlsplit(url).scheme, urlsplit(url).netloc) != (wanted.scheme, wanted.netloc)
        ]

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextmanager
def chromium_page(tmp_path: Path, *, accept_dialogs: bool = True, proxy: str | None = None,
                  viewport: tuple[int, int] = (1360, 900)) -> Iterator[BrowserPage]:
    """A page in a fresh Chromium profile under ``tmp_path``; ``proxy`` e.g. "http://127.0.0.1:8080"."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            proxy={"server": proxy} if proxy else None,
            viewport={"width": viewport[0], "height": viewport[1]},
            timeout=NAVIGATION_TIMEOUT_MS,
        )
        try:
            context.set_default_timeout(NAVIGATION_TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            recorded = BrowserPage(page)
            # Context-wide: requests of workers and of other tabs the page opens count too.
            context.on("request", lambda request: recorded.requests.append(request.url))
            page.on("console", lambda message: message.type == "error" and recorded.console_errors.append(message.text))

            def on_dialog(dialog) -> None:
                recorded.dialogs.append(f"{dialog.type}: {dialog.message}")
                dialog.accept() if accept_dialogs else dialog.dismiss()

            page.on("dialog", on_dialog)
            yield recorded
        finally:
            context.close()
