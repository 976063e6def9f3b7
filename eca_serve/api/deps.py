"""Typed dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from eca_serve.dataplane import DataPlane
from eca_serve.pipelines.manager import ModelManager
from eca_serve.settings import Settings


# async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, two thread hand-offs
# per dependency per request for what is an attribute read.
async def get_manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


Manager = Annotated[ModelManager, Depends(get_manager)]
Plane = Annotated[DataPlane, Depends(get_dataplane)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
