"""Every module of src/ imports on its own: no import cycle hides behind an import order that happens to
work (importing `gateway.app` first, say).

One interpreter imports the third-party libraries once, then forks a child per module, which imports that
one module and nothing of ours before it: the isolation of a fresh `python -c "import <module>"` without
paying for aiohttp and pydantic a hundred times.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = ("gateway", "workers", "shared", "devstack")
# Imported once before forking, only to save time (polars is left out: it warns when a process forks).
PRELOAD = (
    "aiohttp", "pydantic", "pydantic_settings", "asyncpg", "redis", "arq", "orjson", "prometheus_client",
    "cryptography.fernet", "jinja2", "aiosmtplib", "aiosmtpd.controller", "jwt", "cronsim", "email_validator",
)  # fmt: skip

DRIVER = """
import importlib, os, sys
ours = set(sys.argv[2].split(","))
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ours)
if loaded:
    sys.exit(f"preloading imported modules of ours: {loaded}")
failed = False
for module in sys.argv[3:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            os._exit(1)
        os._exit(0)
    os.close(write)
    message = b""
    while chunk := os.read(read, 65536):
        message += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed = True
        print(f"{module}: {message.decode() or f'exit status {status}'}", flush=True)
sys.exit(1 if failed else 0)
"""


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            parts = path.relative_to(SRC).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_on_its_own() -> None:
    modules = _modules()
    assert {"gateway.api_docs", "gateway.openapi", "workers.runtime", "shared.core.settings"} <= set(modules)

    done = subprocess.run(
        [sys.executable, "-c", DRIVER, ",".join(PRELOAD), ",".join(PACKAGES), *modules],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        check=False,
    )

    assert done.returncode == 0, f"modules that do not import on their own:\n{done.stdout}{done.stderr}"
