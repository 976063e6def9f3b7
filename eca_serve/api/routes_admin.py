"""Run-time model load/unload (Triton's repository API), off unless ``ECA_SERVE_ADMIN_ENABLED`` with a token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header

from eca_serve.api.deps import AppSettings, Manager
from eca_serve.api.errors import AdminDisabledError, UnauthorizedError
from eca_serve.api.schemas import ErrorBody
from eca_serve.settings import Settings

ERRORS = {s: {"model": ErrorBody} for s in (401, 403, 404)}


async def require_admin(settings: AppSettings, authorization: Annotated[str | None, Header()] = None) -> None:
    """Admin calls need the flag and ``Authorization: Bearer <ECA_SERVE_ADMIN_TOKEN>``."""
    if not settings.admin_enabled:
        raise AdminDisabledError("admin endpoints are disabled (set ECA_SERVE_ADMIN_ENABLED=true and ECA_SERVE_ADMIN_TOKEN)")
    expected = f"Bearer {settings.admin_token}"
    if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
        raise UnauthorizedError("missing or wrong admin token (Authorization: Bearer <token>)")


router = APIRouter(prefix="/v2/repository/models", tags=["admin"], dependencies=[Depends(require_admin)], responses=ERRORS)


@router.post("/{name}/load")
async def load(name: str, manager: Manager) -> dict[str, object]:
    """Load (and warm up) every version of ``name`` present in the repository but not served yet."""
    return {"name": name, "loaded_versions": await manager.load_model(name)}


@router.post("/{name}/unload")
async def unload(name: str, manager: Manager) -> dict[str, object]:
    """Drain and stop every version of ``name``."""
    return {"name": name, "unloaded_versions": await manager.unload_model(name)}


def check_admin_settings(settings: Settings) -> None:
    """An enabled admin API without a token would let anyone load and unload models."""
    if settings.admin_enabled and not settings.admin_token:
        from eca_serve.errors import ConfigError

        raise ConfigError("ECA_SERVE_ADMIN_ENABLED needs ECA_SERVE_ADMIN_TOKEN")
