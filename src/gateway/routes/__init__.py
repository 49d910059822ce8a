"""setup_routes(app): the only place that knows every resource module."""

from __future__ import annotations

from aiohttp import web

from gateway.routes import batches, health, job_events, job_types, jobs, queues, schedules


def setup_routes(app: web.Application) -> None:
    for module in (health, jobs, job_events, job_types, batches, queues, schedules):
        app.router.add_routes(module.routes)
