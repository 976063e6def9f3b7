"""HTTP API (FastAPI): the only package that imports fastapi."""

from eca_serve.api.app import create_app

__all__ = ["create_app"]
