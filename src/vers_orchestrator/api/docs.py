"""The interactive docs at `/docs`, with Swagger UI served from the package itself.

Litestar's Swagger page loads its script, style and icon from a CDN, so it is blank on a
machine without internet access. The files are those of swagger-ui-dist, vendored with
their licence in `swagger_ui/` (`scripts/update-swagger-ui.sh` replaces them).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

ASSETS_PATH = "/docs/assets"
_ASSETS = Path(__file__).parent / "swagger_ui"


def swagger_ui() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def swagger_ui_assets() -> Router:
    # Beside the API routers, not under them: no API key, like `/docs` itself.
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[_ASSETS],
        name="swagger_ui_assets",
        cache_control=CacheControlHeader(max_age=3600),
    )
