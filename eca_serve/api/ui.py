"""The demo page at ``/``: static HTML, JavaScript and CSS shipped in the package, on the public v1 API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from eca_serve.api.docs import OFFLINE_CSP

UI_DIR = Path(__file__).parent / "static" / "ui"


def install_ui(app: FastAPI) -> None:
    """``/`` answers the page; ``/ui/*`` its script and style sheet."""
    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")
    app.add_api_route("/", demo_page, methods=["GET"], include_in_schema=False)


async def demo_page() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=OFFLINE_CSP)
