"""`/docs` works offline: Swagger UI's files come from the server itself."""

from __future__ import annotations

import shutil
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from tests.support import Server

ASSETS = (
    "/docs/assets/swagger-ui-bundle.js",
    "/docs/assets/swagger-ui-standalone-preset.js",
    "/docs/assets/swagger-ui.css",
    "/docs/assets/favicon-32x32.png",
)


def _chromium() -> str:
    # Debian's package (scripts/install-system-packages.sh installs it); Playwright's own
    # browser downloads are never used.
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium on PATH: install Debian's chromium (scripts/install-system-packages.sh)"
    )


class TestDocs:
    def test_assets_need_no_key(self, server: Server) -> None:
        with server.client() as client:
            page = client.get("/docs")
            assert page.status_code == 200
            for path in ASSETS:
                assert path in page.text
                assert client.get(path).status_code == 200, path

    def test_renders_the_operations_without_leaving_the_machine(self, server: Server) -> None:
        requested: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_chromium())
            try:
                context = browser.new_context()
                context.on("request", lambda request: requested.append(request.url))
                page = context.new_page()
                page.goto(f"{server.base_url}/docs")
                # By the load event the page has asked for its scripts and styles: a CDN
                # among them explains a blank page better than the timeout below would.
                assert _leaving(requested) == []
                # Swagger UI names each operation's block `operations-<tag>-<operationId>`.
                page.wait_for_selector("[id$='-create_new_root_vm']", timeout=15_000)
                paths = page.eval_on_selector_all(
                    ".opblock-summary-path", "blocks => blocks.map(b => b.dataset.path)"
                )
            finally:
                browser.close()
        assert "/api/v1/repositories" in paths
        assert "/api/v1/vm/new_root" in paths
        assert _leaving(requested) == []
        assert f"{server.base_url}/docs/assets/swagger-ui-bundle.js" in requested


def _leaving(urls: list[str]) -> list[str]:
    """The URLs that would leave the machine (`data:` and `blob:` never do)."""
    return [
        url
        for url in urls
        if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname != "127.0.0.1"
    ]
