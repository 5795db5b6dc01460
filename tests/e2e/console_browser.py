"""Headless Chromium for the console's tests: the system's browser, driven by playwright.

No browser is downloaded: Debian's ``chromium`` package is used as it is installed. Every
tab records what a test must be able to assert about it: dialogs opened (an injected
``alert`` would open one), script errors, console errors, and every request it tried to
make; requests to any origin but the allowed ones are failed, never sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support import unavailable

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images" / "console"


@contextmanager
def chromium() -> Iterator[Any]:
    """The system's Chromium; a skip where it is missing, but a failure in CI."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (install Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Tab:
    """A page and what happened in it."""

    page: Any
    base_url: str
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    #: Requests to an origin not allowed: failed before they left the browser.
    refused: list[str] = field(default_factory=list)

    def open(self, hash_: str = "") -> None:
        self.page.goto(f"{self.base_url}/console/{hash_}")

    def sign_in(self, token: str) -> None:
        self.open()
        self.page.fill("#token", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("[data-testid=who]")

    def go(self, hash_: str, ready: str) -> None:
        """Follow a hash route and wait for a selector of the view it shows."""
        self.page.evaluate("hash => { location.hash = hash; }", hash_)
        self.page.wait_for_selector(ready)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@contextmanager
def tab(browser: Any, base_url: str, allowed: tuple[str, ...] = (),
        viewport: dict[str, int] | None = None) -> Iterator[Tab]:
    """A fresh browser context (its own sessionStorage) on the console of ``base_url``."""
    context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
    page = context.new_page()
    watched = Tab(page, base_url)
    origins = {origin(base_url), *(origin(url) for url in allowed)}

    def route(route: Any) -> None:
        url = route.request.url
        watched.requests.append(url)
        if origin(url) in origins:
            route.continue_()
        else:
            watched.refused.append(url)
            route.abort("blockedbyclient")

    def dialog(opened: Any) -> None:
        watched.dialogs.append(opened.message)
        opened.dismiss()

    context.route("**/*", route)
    page.on("dialog", dialog)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    page.on("console", lambda message: watched.console_errors.append(message.text)
            if message.type == "error" else None)
    try:
        yield watched
    finally:
        context.close()
