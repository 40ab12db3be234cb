"""Check an HTML report in a real browser: headless Chromium, offline, driven by Playwright.

The browser is the system's Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it
where it can), never one that Playwright downloads: there is no ``playwright install`` and
no network. A report must be self-contained, so every request that is not ``file:`` or
``data:`` is blocked and recorded.

    from tests.browser import render, requires_chromium

    @requires_chromium
    def test_report(tmp_path):
        result = render(tmp_path / "report.html", selectors=("table", "img"))
        assert result.problems == []
        assert result.count("table") == 3

Tests that use :func:`render` carry :data:`requires_chromium`, so they are skipped (with the
reason) where Chromium or the ``playwright`` package is absent, rather than failing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Error, Request, Route

SYSTEM_CHROMIUM = "/usr/bin/chromium"

# Headless in a container, as root, with no network: no sandbox (root), no GPU, and none of
# the background traffic (updates, sync, QUIC probes) a fresh profile would start. Playwright
# adds --headless and a fresh temporary --user-data-dir itself.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
)

# Schemes a self-contained report may load; anything else is blocked.
ALLOWED_SCHEMES = ("file:", "data:", "blob:", "about:")

# A generous bound for a local file: a report that needs longer is broken anyway.
TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    """The system Chromium: /usr/bin/chromium, else ``chromium`` on PATH, else None."""
    if os.access(SYSTEM_CHROMIUM, os.X_OK):
        return SYSTEM_CHROMIUM
    return shutil.which("chromium")


def playwright_available() -> bool:
    return importlib.util.find_spec("playwright") is not None


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if chromium_path() is None:
        return (
            f"no Chromium: neither {SYSTEM_CHROMIUM} nor `chromium` on PATH "
            "(Debian: apt-get install chromium; .ci/run installs it where it can)"
        )
    if not playwright_available():
        return "the `playwright` package is not installed (pip install -e '.[dev]')"
    return None


requires_chromium = pytest.mark.skipif(
    skip_reason() is not None, reason=skip_reason() or "browser tests can run"
)


@dataclass
class RenderResult:
    """What a page did while it loaded, and what it looked like once it had."""

    url: str
    title: str
    console_errors: list[str] = field(default_factory=list)  # console messages of type error
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    blocked_requests: list[str] = field(default_factory=list)  # URLs not file:/data:
    failed_requests: list[str] = field(default_factory=list)  # "URL: reason", blocked excluded
    images: int = 0  # <img> elements on the page
    broken_images: list[str] = field(default_factory=list)  # alt, else the src's first 80 chars
    counts: dict[str, int] = field(default_factory=dict)  # selector -> matching elements
    screenshot: Path | None = None  # the full-page PNG, when one was asked for

    def count(self, selector: str) -> int:
        """Elements matching ``selector``; it must have been passed to :func:`render`."""
        try:
            return self.counts[selector]
        except KeyError:
            raise KeyError(
                f"{selector!r} was not counted: pass it in render(..., selectors=...)"
            ) from None

    @property
    def problems(self) -> list[str]:
        """Everything that is wrong with the page, one line each; empty when it is clean."""
        return [
            *(f"console error: {m}" for m in self.console_errors),
            *(f"page error: {m}" for m in self.page_errors),
            *(f"blocked request: {u}" for u in self.blocked_requests),
            *(f"failed request: {u}" for u in self.failed_requests),
            *(f"broken image: {i}" for i in self.broken_images),
        ]

    @property
    def ok(self) -> bool:
        return not self.problems


# Runs in the page after load: lazy images are made eager and every image is given the
# chance to decode, then each reports whether it did (naturalWidth > 0).
_IMAGES_JS = """
async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) { if (img.loading === "lazy") img.loading = "eager"; }
  await Promise.all(imgs.map((img) => img.decode().catch(() => null)));
  return imgs.map((img) => ({
    ok: img.complete && img.naturalWidth > 0,
    label: img.alt || (img.getAttribute("src") || img.currentSrc || "").slice(0, 80),
  }));
}
"""


def render(
    html_path: Path,
    screenshot: Path | None = None,
    width: int = 1280,
    selectors: Sequence[str] = (),
) -> RenderResult:
    """Open ``html_path`` in headless Chromium, offline, and report what happened.

    Every request that is not ``file:``/``data:`` is aborted and listed in
    ``blocked_requests`` (Chromium then also logs a console error for it). ``selectors`` are
    counted with ``querySelectorAll`` after load; ``screenshot``, when given, receives a
    full-page PNG ``width`` CSS pixels wide.
    """
    reason = skip_reason()
    if reason is not None:
        raise RuntimeError(f"cannot render {html_path}: {reason}")
    from playwright.sync_api import sync_playwright

    url = Path(html_path).resolve().as_uri()
    console_errors: list[str] = []
    page_errors: list[str] = []
    blocked: list[str] = []
    failed: list[str] = []

    def on_route(route: Route) -> None:
        request_url = route.request.url
        if request_url.startswith(ALLOWED_SCHEMES):
            route.continue_()
        else:
            blocked.append(request_url)
            route.abort("blockedbyclient")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    def on_page_error(error: Error) -> None:
        page_errors.append(f"{error.name}: {error.message}")

    def on_request_failed(request: Request) -> None:
        if request.url not in blocked:
            failed.append(f"{request.url}: {request.failure or 'failed'}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            context = browser.new_context(
                viewport={"width": width, "height": 800}, service_workers="block"
            )
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", on_route)
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("requestfailed", on_request_failed)
            page.goto(url, wait_until="load")
            images = page.evaluate(_IMAGES_JS)
            counts = {
                s: int(page.evaluate("(s) => document.querySelectorAll(s).length", s))
                for s in selectors
            }
            if screenshot is not None:
                screenshot = Path(screenshot)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            title = page.title()
        finally:
            browser.close()

    return RenderResult(
        url=url,
        title=title,
        console_errors=console_errors,
        page_errors=page_errors,
        blocked_requests=blocked,
        failed_requests=failed,
        images=len(images),
        broken_images=[img["label"] for img in images if not img["ok"]],
        counts=counts,
        screenshot=screenshot,
    )
