"""Files and directories of the embedded servers that only their owner may read: passwords, configs, data.

Every `conveyor run` on a machine shares 127.0.0.1 with every other account there, so each embedded server
has a password kept in a 0600 file under `var/`, and nothing here follows a symbolic link planted by another
account: files are opened with O_NOFOLLOW, directories checked with lstat/fstat before they are used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from devstack.embedded.process import EmbeddedServerError

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
PASSWORD_BYTES: Final = 24  # 32 URL-safe characters: no quoting needed in a URL or a config line
_SCRAM_ITERATIONS: Final = 4096  # PostgreSQL's own default for scram-sha-256


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700; an existing directory keeps its mode (its owner chose it)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


# What `conveyor run` keeps under var/ that other accounts must not read: caught mail, Redis' data, uploads.
PRIVATE_SUBDIRS: Final = ("mail", "redis", "storage")


def tighten(var_dir: Path) -> None:
    """Make a `var/` left open by an earlier version private again (new ones are created 0700).

    Each known folder that is a real directory of this account loses group and other access; so does `var/`
    itself, except for root, whose PostgreSQL cluster may live in `var/pg` for the `postgres` account to reach.
    Files inside keep their mode, unreachable through a 0700 folder. Links and foreign folders are left alone.
    """
    folders = [var_dir / name for name in PRIVATE_SUBDIRS]
    for path in folders if os.geteuid() == 0 else [var_dir, *folders]:
        _tighten_dir(path)


def _tighten_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # absent, a link or not a directory: nothing of ours to tighten
        return
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` as a 0600 file, atomically (a temp file renamed over it), never through a link."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _read_own(path: Path) -> bytes | None:
    """The content of the regular file `path` if it is ours (else None: it will be replaced); tightened to 0600."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise EmbeddedServerError(f"{path} is not a regular file; remove it") from exc
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise EmbeddedServerError(f"{path} is not a regular file of this account; remove it")
        if info.st_mode & 0o077:
            os.fchmod(file.fileno(), FILE_MODE)
        return file.read()


def stored_password(path: Path) -> str:
    """The password kept in `path`; a fresh random one is stored first when there is none yet.

    Kept between runs, so a URL copied from `var/embedded.json` into a client keeps working.
    """
    private_dir(path.parent)
    kept = (_read_own(path) or b"").decode("ascii", errors="replace").strip()
    if kept.isascii() and len(kept) >= 16 and all(c.isalnum() or c in "-_" for c in kept):
        return kept
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    write_private(path, password.encode() + b"\n")
    return password


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, as `pg_authid` holds it).

    Handing the server the verifier, not the password, keeps the password out of its logs even when the
    statement that sets it is echoed in an error.
    """
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@contextlib.contextmanager
def open_dir(path: Path) -> Iterator[int]:
    """An fd of the directory `path` itself, never of what a symbolic link there points to.

    Raises:
        EmbeddedServerError: `path` is a link or not a directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise EmbeddedServerError(f"{path} is not a directory (a symbolic link?)") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def redact(url: str) -> str:
    """`url` without the password in its user part: what a banner or a log line may show."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"
