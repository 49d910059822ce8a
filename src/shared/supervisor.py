"""`conveyor run`: start embedded servers where none is configured, run the gateway and workers, stop it all cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import jwt

from shared.embedded import HOST, EmbeddedPostgres, EmbeddedRedis, die_with_parent
from shared.mailcatcher import catch_mail
from shared.settings import AuthConfig, CryptoConfig, GatewayConfig, WorkerConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")
Process = asyncio.subprocess.Process

PROCESS_NAMES: Final = ("gateway", "default", "heavy", "scheduler")
WORKER_NAMES: Final = ("default", "heavy", "scheduler")
# WORKER_METRICS_PORT is a base: each worker adds its offset so the three can share one host.
_METRICS_PORT_OFFSET: Final = {"default": 0, "heavy": 1, "scheduler": 2}
_KILL_MARGIN_S: Final = 5.0  # on top of SHUTDOWN_GRACE_S, the time a child has to exit before SIGKILL
ADMIN_TOKEN_TTL_S: Final = 24 * 3600
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What `conveyor run` starts (a subset of PROCESS_NAMES) and where embedded servers keep their data."""

    only: tuple[str, ...] = PROCESS_NAMES
    var_dir: Path = Path("var")
    ready_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.only) - set(PROCESS_NAMES))
        if unknown or not self.only:
            raise ValueError(f"choose processes among {', '.join(PROCESS_NAMES)} (got {', '.join(unknown) or 'none'})")


def mint_token(auth_config: AuthConfig, sub: str, role: str = "user", ttl_s: int = 3600) -> str:
    """An HS256 JWT the gateway accepts: `sub`, `role`, `iat`, `exp`, plus `iss`/`aud` when configured."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": now, "exp": now + ttl_s}
    if auth_config.jwt_issuer:
        claims["iss"] = auth_config.jwt_issuer
    if auth_config.jwt_audience:
        claims["aud"] = auth_config.jwt_audience
    return jwt.encode(claims, auth_config.jwt_secret.get_secret_value(), algorithm="HS256")


class _StopRequest:
    """Signal handler state: the first signal asks for a graceful stop, a second one skips the grace period."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()

    def __call__(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            logger.warning("supervisor.forcing_stop", extra={"signal": sig.name})
            self.forced.set()
        else:
            logger.info("supervisor.stop_requested", extra={"signal": sig.name})
            self.requested.set()


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


async def _start_services(stack: AsyncExitStack, env: dict[str, str], options: RunOptions) -> list[tuple[str, str]]:
    """Start what the environment does not configure, point `env` at it; banner lines (label, text)."""
    var = options.var_dir.resolve()
    notes: list[tuple[str, str]] = []
    # Each Redis URL left unset points at the embedded server: never at a default 6379 someone else owns.
    unset = [name for name in ("REDIS_CACHE_URL", "REDIS_JOBS_URL") if not _configured(env, name)]
    if not unset:
        notes.append(("redis", "as configured (REDIS_CACHE_URL / REDIS_JOBS_URL)"))
    else:
        redis = await stack.enter_async_context(EmbeddedRedis(var / "redis"))
        for name in unset:
            _put(env, name, f"{redis.url}/{0 if name == 'REDIS_CACHE_URL' else 1}")
        notes.append(("redis", f"{redis.url} (embedded, for {' and '.join(unset)}; data in {redis.data_dir})"))
    if _configured(env, "DATABASE_URL"):
        notes.append(("postgres", "as configured (DATABASE_URL)"))
    else:
        pg = await stack.enter_async_context(EmbeddedPostgres(var / "pg", project_dir=Path.cwd()))
        _put(env, "DATABASE_URL", pg.url)
        notes.append(("postgres", f"{pg.url} (embedded; data in {pg.home})"))
    if not any(name in WORKER_NAMES for name in options.only):
        return notes  # only workers send mail
    if _configured(env, "SMTP_HOST"):
        notes.append(("mail", "as configured (SMTP_HOST)"))
        return notes
    mail_dir = var / "mail"
    port = await stack.enter_async_context(catch_mail(mail_dir, host=HOST))
    _put(env, "SMTP_HOST", HOST)
    _put(env, "SMTP_PORT", str(port))
    # The catcher speaks plain SMTP without AUTH; credentials meant for some other server would only break it.
    for name in ("SMTP_TLS", "SMTP_USERNAME", "SMTP_PASSWORD"):
        _put(env, name, None)
    notes.append(("mail", f"smtp://{HOST}:{port} (embedded catcher; every message saved as {mail_dir}/*.eml)"))
    return notes


async def _spawn(name: str, env: Mapping[str, str], metrics_base: int | None) -> Process:
    child_env = dict(env)
    if name == "gateway":
        args = ["-m", "gateway"]
    else:
        args = ["-m", "workers", name]
        if metrics_base is not None:  # 0 means "any free port" for every worker
            _put(
                child_env, "WORKER_METRICS_PORT", str(metrics_base + _METRICS_PORT_OFFSET[name] if metrics_base else 0)
            )
    # Own session: a terminal Ctrl-C reaches only us, so children get exactly one SIGTERM, in order.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=child_env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGTERM),  # no orphans even if we are SIGKILLed
    )
    logger.info("supervisor.child_started", extra={"child": name, "pid": proc.pid})
    return proc


def gateway_url(config: GatewayConfig) -> str:
    """The URL a local client uses to reach the gateway bound as configured."""
    host = config.host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping a wildcard bind to loopback, not binding
        host = HOST
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


async def _gateway_healthy(url: str, proc: Process, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline and proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.2)
    return False


async def _announce(
    children: Mapping[str, Process],
    gateway: GatewayConfig,
    auth: AuthConfig,
    notes: list[tuple[str, str]],
    timeout_s: float,
) -> bool:
    """Wait for the gateway's /health, then print the banner; False if the gateway never became healthy."""
    lines = ["", "Conveyor is running", f"  {'processes':<11} {', '.join(children)}"]
    proc = children.get("gateway")
    if proc is not None:
        url = gateway_url(gateway)
        if not await _gateway_healthy(url, proc, timeout_s):
            if proc.returncode is None:
                logger.error("supervisor.gateway_not_healthy", extra={"url": f"{url}/health", "timeout_s": timeout_s})
            return False
        token = mint_token(auth, "admin", "admin", ADMIN_TOKEN_TTL_S)
        lines += [
            f"  {'gateway':<11} {url}  (readiness: {url}/ready)",
            f"  {'admin token':<11} {token}",
            f"  {'':<11} (24 h; more with `conveyor token --sub NAME [--role admin]`)",
        ]
    lines += [f"  {label:<11} {text}" for label, text in notes]
    lines += ["Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)  # noqa: T201 - the banner is this command's output
    return True


async def _watch(children: Mapping[str, Process], announce: Awaitable[bool], stop: _StopRequest) -> int:
    """Run until a stop is requested (0), a child exits on its own (1) or the gateway never gets healthy (1)."""
    exits: dict[asyncio.Future[Any], str] = {asyncio.ensure_future(p.wait()): n for n, p in children.items()}
    requested = asyncio.ensure_future(stop.requested.wait())
    announced = asyncio.ensure_future(announce)
    pending: set[asyncio.Future[Any]] = {*exits, requested, announced}
    try:
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            exited = [task for task in done if task in exits]
            if exited:
                for task in exited:
                    logger.error("supervisor.child_died", extra={"child": exits[task], "exit_code": task.result()})
                return 1
            if requested in done:
                return 0
            if announced in done and not announced.result():
                return 1
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _stop_children(children: Mapping[str, Process], grace_s: float, forced: asyncio.Event) -> None:
    """SIGTERM every live child, wait up to `grace_s` (or a second signal), then SIGKILL the stragglers."""
    alive = {name: proc for name, proc in children.items() if proc.returncode is None}
    if not alive:
        return
    logger.info("supervisor.stopping_children", extra={"children": sorted(alive), "grace_s": grace_s})
    for proc in alive.values():
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    exited = asyncio.ensure_future(asyncio.gather(*(proc.wait() for proc in alive.values())))
    force = asyncio.ensure_future(forced.wait())
    waiters: set[asyncio.Future[Any]] = {exited, force}
    await asyncio.wait(waiters, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
    force.cancel()
    for name, proc in alive.items():
        if proc.returncode is None:
            logger.warning("supervisor.child_killed", extra={"child": name, "pid": proc.pid})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its session's group: anything it started goes too
    await exited


async def run(options: RunOptions) -> int:
    """Run the chosen processes until SIGINT/SIGTERM/SIGHUP (exit 0) or until one dies on its own (exit 1).

    Raises:
        pydantic.ValidationError: the environment holds an invalid setting.
        shared.embedded.EmbeddedServerError: an embedded server could not start.
    """
    gateway, auth, worker = GatewayConfig(), AuthConfig(), WorkerConfig()  # fail before anything starts
    CryptoConfig()  # ENCRYPTION_KEYS is required in production, like a real JWT_SECRET
    env = dict(os.environ)
    loop = asyncio.get_running_loop()
    stop = _StopRequest()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        async with AsyncExitStack() as services:  # exits last: servers outlive every child
            try:
                notes = await _unless_stopped(_start_services(services, env, options), stop.requested)
            except _StoppedDuringStartup:
                return 0
            children: dict[str, Process] = {}
            try:
                for name in options.only:
                    children[name] = await _spawn(name, env, worker.metrics_port)
                announce = _announce(children, gateway, auth, notes, options.ready_timeout_s)
                return await _watch(children, announce, stop)
            finally:
                await _stop_children(children, gateway.shutdown_grace_s + _KILL_MARGIN_S, stop.forced)
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        logger.info("supervisor.stopped")
