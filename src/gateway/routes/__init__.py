"""Every route of the gateway, in router order: the only place that knows every resource module."""

from __future__ import annotations

from types import ModuleType

from aiohttp import web

from gateway.routes import (
    api_keys,
    artifacts,
    batches,
    health,
    job_events,
    job_types,
    jobs,
    notifications,
    openapi,
    queues,
    schedules,
    uploads,
    webhook_keys,
)
from gateway.routing import Route, install

MODULES: tuple[ModuleType, ...] = (health, openapi, jobs, job_events, job_types, batches, queues, schedules)
MODULES += (uploads, artifacts, notifications, api_keys, webhook_keys)
ROUTES: tuple[Route, ...] = tuple(route for module in MODULES for route in module.routes)


def setup_routes(app: web.Application) -> None:
    install(app, ROUTES)
