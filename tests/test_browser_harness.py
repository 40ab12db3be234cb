"""The browser harness itself (tests/browser.py), on tiny hand-written pages."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import pytest

from tests.browser import RenderResult, render, requires_chromium


def _png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG, all red."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _page(tmp_path: Path, body: str, title: str = "t") -> Path:
    path = tmp_path / "page.html"
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body>{body}</body></html>",
        encoding="utf-8",
    )
    return path


def test_count_names_the_selector_that_was_not_counted() -> None:
    result = RenderResult(url="file:///x.html", title="x", counts={"p": 2})
    assert result.count("p") == 2 and result.ok
    with pytest.raises(KeyError, match="selectors="):
        result.count("table")
    assert RenderResult(url="u", title="t", broken_images=["a"]).problems == ["broken image: a"]


@requires_chromium
def test_clean_page(tmp_path: Path) -> None:
    (tmp_path / "local.png").write_bytes(_png(3, 3))
    data_uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    html = _page(
        tmp_path,
        "<h1>Report</h1><p>one</p><p>two</p><ul><li>a</li><li>b</li><li>c</li></ul>"
        f"<img alt='inline' src='{data_uri}'><img alt='local' src='local.png'>"
        "<script>document.body.dataset.ran = 'yes';</script>",
        title="Clean report",
    )
    shot = tmp_path / "shots" / "clean.png"
    result = render(html, screenshot=shot, selectors=("p", "li", "table", "body[data-ran=yes]"))
    assert result.problems == []
    assert result.title == "Clean report"
    assert result.url.startswith("file://")
    assert result.counts == {"p": 2, "li": 3, "table": 0, "body[data-ran=yes]": 1}
    assert result.images == 2 and result.broken_images == []
    assert result.screenshot == shot
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_chromium
def test_js_error(tmp_path: Path) -> None:
    html = _page(tmp_path, "<script>console.error('boom'); null.missing;</script><p>x</p>")
    result = render(html, selectors=("p",))
    assert len(result.page_errors) == 1 and "TypeError" in result.page_errors[0]
    assert any("boom" in message for message in result.console_errors)
    assert result.count("p") == 1  # the page still rendered
    assert not result.ok


@requires_chromium
def test_broken_image(tmp_path: Path) -> None:
    html = _page(
        tmp_path,
        "<img alt='missing' src='missing.png'><img src='data:image/png;base64,AAAA'>"
        "<img alt='fine' src='data:image/png;base64," + base64.b64encode(_png()).decode() + "'>",
    )
    result = render(html)
    assert result.images == 3
    assert result.broken_images == ["missing", "data:image/png;base64,AAAA"]
    assert any("missing.png" in failure for failure in result.failed_requests)
    assert result.blocked_requests == []


@requires_chromium
def test_network_requests_are_blocked(tmp_path: Path) -> None:
    html = _page(
        tmp_path,
        "<script src='http://example.com/x.js'></script>"
        "<link rel='stylesheet' href='https://example.com/style.css'><p>offline</p>",
    )
    result = render(html, selectors=("p",))
    assert sorted(result.blocked_requests) == [
        "http://example.com/x.js",
        "https://example.com/style.css",
    ]
    assert result.failed_requests == []  # blocked, not failed
    assert result.page_errors == []
    assert result.count("p") == 1
