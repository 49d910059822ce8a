"""The `conveyor` console script: `run` the local stack, mint a `token`, `migrate` the database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from devstack.embedded import EmbeddedServerError
from devstack.local_extra import MissingExtra
from devstack.supervisor import PROCESS_NAMES, RunOptions, SupervisorError, mint_token, run
from shared.accounts.roles import ROLES, USER
from shared.core.logging import configure_logging
from shared.core.settings import MAX_PROCESSES_PER_QUEUE, AuthConfig, LogConfig, PostgresConfig, describe_errors
from shared.infra import db

T = TypeVar("T")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _process_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PROCESSES_PER_QUEUE:
        raise argparse.ArgumentTypeError(f"must be a number of processes from 1 to {MAX_PROCESSES_PER_QUEUE}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Conveyor background-job service, local tooling.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_cmd = commands.add_parser(
        "run",
        help="run the gateway and workers; embedded Redis/PostgreSQL/mail catcher where none is configured",
    )
    run_cmd.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=PROCESS_NAMES,
        metavar="PROCESS",
        help=f"run only these processes ({', '.join(PROCESS_NAMES)}); default: all",
    )
    run_cmd.add_argument(
        "--workers",
        type=_process_count,
        metavar="N",
        help="processes for the default queue (default: WORKER_PROCESSES, 2)",
    )
    run_cmd.add_argument(
        "--heavy-workers",
        type=_process_count,
        metavar="N",
        help="processes for the heavy queue (default: HEAVY_WORKER_PROCESSES, 1)",
    )
    token = commands.add_parser("token", help="print a signed JWT for the gateway (uses JWT_SECRET)")
    token.add_argument("--sub", required=True, help="the principal's name (the `sub` claim)")
    token.add_argument("--role", choices=ROLES, default=USER)
    token.add_argument(
        "--ttl-s",
        "--ttl",
        dest="ttl_s",
        type=_positive_int,
        default=3600,
        help="lifetime in seconds (default 3600; at most JWT_MAX_LIFETIME_S)",
    )
    commands.add_parser("migrate", help="apply pending database migrations to DATABASE_URL")
    return parser


def _run_async(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # optional speed-up, absent on some platforms
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)


def _local_auth() -> AuthConfig:
    """JWT settings as `conveyor token` reads them: an unset ENVIRONMENT means development, as for `conveyor run`
    (whose gateway then accepts the token), although every server takes it as production (signing with the
    public dev secret grants nothing a copy of the source does not; servers refuse it outside explicit
    development on loopback)."""
    if any(key.upper() == "ENVIRONMENT" for key in os.environ):
        return AuthConfig()
    return AuthConfig(environment="development")


def _token(sub: str, role: str, ttl_s: int) -> int:
    config = _local_auth()
    if ttl_s > config.jwt_max_lifetime_s:
        print(  # noqa: T201
            f"conveyor: --ttl-s {ttl_s} is longer than JWT_MAX_LIFETIME_S ({config.jwt_max_lifetime_s:g} s), "
            "so the gateway would refuse the token",
            file=sys.stderr,
        )
        return 2
    print(mint_token(config, sub, role, ttl_s))  # noqa: T201 - the command's output
    return 0


async def _migrate() -> None:
    async with db.open_pool(PostgresConfig(), migrate=True):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `conveyor` console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "token":
            return _token(args.sub, args.role, args.ttl_s)
        # In a terminal, the local tooling (and every child of `run`) logs readable lines unless LOG_FORMAT says.
        log = LogConfig().for_terminal(sys.stderr.isatty())
        configure_logging(log, role="supervisor" if args.command == "run" else args.command)
        # aiosmtpd logs every SMTP command of the mail catcher at INFO; only its problems are worth a line.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        if args.command == "migrate":
            _run_async(_migrate())
            return 0
        only = tuple(dict.fromkeys(args.only)) if args.only else PROCESS_NAMES
        options = RunOptions(only=only, workers=args.workers, heavy_workers=args.heavy_workers, log_format=log.format)
        return _run_async(run(options))
    except ValidationError as exc:
        print(*describe_errors(exc, "conveyor"), sep="\n", file=sys.stderr)  # noqa: T201
        return 2
    except MissingExtra as exc:
        print(f"conveyor: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except (EmbeddedServerError, SupervisorError) as exc:
        print(f"conveyor: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:  # `migrate` against an unreachable database
        print(f"conveyor: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)  # noqa: T201
        return 1


if __name__ == "__main__":
    sys.exit(main())
