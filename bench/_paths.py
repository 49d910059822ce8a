"""Imported first by the bench's entry: puts tests/ on sys.path for the helpers tests and the bench share
(`support.redis_pair`). The project's packages (src/) are installed; bench/ is the script's own directory."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)
