"""Typed web.AppKey and request-key constants."""

from __future__ import annotations

from aiohttp import web
from arq.connections import ArqRedis

from gateway.event_hub import EventHub
from gateway.security.auth import Principal
from shared.core.metrics import Metrics
from shared.core.settings import GatewaySettings
from shared.infra.db import Pool
from shared.infra.redis import CacheRedis
from shared.infra.sealing import Sealer
from shared.jobtypes.spec import Registry
from shared.ledger.intake import Intake
from shared.ledger.submission import HandOver

SETTINGS = web.AppKey("settings", GatewaySettings)
PG_POOL = web.AppKey("pg_pool", Pool)
CACHE = web.AppKey("cache", CacheRedis)
JOBS_REDIS = web.AppKey("jobs_redis", ArqRedis)
REGISTRY = web.AppKey("registry", Registry)
SEALER = web.AppKey("sealer", Sealer)
METRICS = web.AppKey("metrics", Metrics)
EVENT_HUB = web.AppKey("event_hub", EventHub)
INTAKE = web.AppKey("intake", Intake)  # POST /api/v1/jobs' grouped inserts
HAND_OVER = web.AppKey("hand_over", HandOver)  # and their grouped enqueues

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
