"""``/docs`` (Swagger UI) and ``/redoc`` from assets installed with the package: no CDN, no web fonts.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and the favicon from another site, so they
are blank without internet. The assets come from the ``fastapi-offline`` distribution (MIT; it ships
Swagger UI's and ReDoc's dist bundles); only its files are used, not its app factory.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request

ASSETS_URL = "/docs-assets"
# The browser itself refuses images, fonts and fetches from elsewhere on our pages: ReDoc's sidebar footer
# loads its logo from its CDN (hidden when that fails), which would leak every visit to a third party.
OFFLINE_CSP = {"Content-Security-Policy": "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'"}
# Swagger UI would otherwise ask validator.swagger.io to check the schema of a public URL.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def assets_dir() -> Path:
    """The folder of ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``, ``favicon.png``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, its OAuth2 redirect, ``/redoc`` and their assets (the app was built with both off)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    app.add_api_route("/docs", swagger_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs/oauth2-redirect", oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc_page, methods=["GET"], include_in_schema=False)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "")


async def swagger_page(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    return _offline(get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png", swagger_ui_parameters=SWAGGER_PARAMETERS,
    ))


async def oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


async def redoc_page(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    return _offline(get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js", redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    ))


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(OFFLINE_CSP)
    return page
