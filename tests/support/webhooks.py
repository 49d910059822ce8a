"""The `webhook.deliver` test stack: the type with a fast fixed backoff (so retries take a fraction of a
second), a worker running it, the gateway and a local receiver over real sockets."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from shared.core.settings import WebhookConfig
from shared.jobtypes import builtin_specs
from shared.jobtypes.spec import Backoff, Registry
from shared.jobtypes.webhook import WEBHOOK_DELIVER
from support.receiver import Hit, Receiver, running_receiver
from support.stack import Api, Services, StartWorker, gateway_settings, running_gateway
from workers.families import builtin_handlers
from workers.families.webhook import wire
from workers.families.webhook.handler import handle_deliver
from workers.runtime import bind

SECRET = "whsec_test_secret"
FAST = dataclasses.replace(WEBHOOK_DELIVER, backoff=Backoff(kind="fixed", base_s=0.2, jitter=False))
REGISTRY = Registry([*(s for s in builtin_specs() if s.name != FAST.name), FAST])
HANDLERS = {**builtin_handlers(), FAST.name: bind(FAST, handle_deliver)}


def hooks(**options: Any) -> WebhookConfig:
    """Webhook settings for a test worker: private destinations allowed (the receiver is on loopback)."""
    return WebhookConfig(**{"allow_private": True, "timeout_s": 2, **options})


@contextlib.asynccontextmanager
async def stack(services: Services, start_worker: StartWorker, **webhook: Any) -> AsyncIterator[tuple[Api, Receiver]]:
    """A worker running the fast type with `hooks(**webhook)`, a receiver, and the gateway."""
    await start_worker("default", handlers=HANDLERS, registry=REGISTRY, webhook=hooks(**webhook))
    async with running_receiver() as receiver, running_gateway(gateway_settings(services), registry=REGISTRY) as api:
        yield api, receiver


def verifies(hit: Hit, key: str, owner: str) -> bool:
    return wire.verify(hit.body, hit.headers, key, owner=owner)
