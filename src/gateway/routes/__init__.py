"""setup_routes(app): the only place that knows every resource module."""

from __future__ import annotations

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


def setup_routes(app: web.Application) -> None:
    modules = (health, openapi, jobs, job_events, job_types, batches, queues, schedules)
    for module in (*modules, uploads, artifacts, notifications, api_keys, webhook_keys):
        app.router.add_routes(module.routes)
