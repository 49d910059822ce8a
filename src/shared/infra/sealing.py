"""Encryption at rest of the payload fields a job type marks secret (Fernet, rotatable keys).

A sealed value is stored as `{"$sealed": "<Fernet token>"}` in place of the plain value, in the ledger
and in Redis alike; only a worker about to run the job opens it. Responses show `"[redacted]"` instead.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import JsonValue

from shared.core import json
from shared.core.errors import PermanentJobError
from shared.core.settings import CryptoConfig

SEALED = "$sealed"
REDACTED = "[redacted]"
# Development only (CryptoConfig refuses a missing ENCRYPTION_KEYS in production).
_DEV_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"conveyor-dev-only-encryption-key").digest())

Path = tuple[str, ...]


def _token(value: object) -> str | None:
    if isinstance(value, dict) and len(value) == 1 and isinstance(token := value.get(SEALED), str):
        return token
    return None


def is_sealed(value: object) -> bool:
    return _token(value) is not None


class Sealer:
    """Seals and opens values with the first key; opens with any key, so old data survives a rotation."""

    def __init__(self, keys: Sequence[bytes | str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def from_config(cls, config: CryptoConfig) -> Sealer:
        if config.keys is None:
            return cls([_DEV_KEY])
        return cls([k.strip() for k in config.keys.get_secret_value().split(",") if k.strip()])

    def seal_value(self, value: JsonValue) -> dict[str, str]:
        return {SEALED: self._fernet.encrypt(json.dumps(value)).decode("ascii")}

    def open_value(self, value: JsonValue) -> JsonValue:
        if (token := _token(value)) is None:
            return value
        try:
            return json.loads(self._fernet.decrypt(token.encode("ascii")))  # type: ignore[no-any-return]
        except InvalidToken as exc:
            # Not retryable: no attempt can open it until the key that sealed it is configured again.
            raise PermanentJobError(
                "a secret payload field cannot be decrypted with the configured ENCRYPTION_KEYS",
                type_name="SecretUndecryptable",
            ) from exc

    def rotate_value(self, value: JsonValue) -> JsonValue:
        """Re-seal under the newest key (for a rotation sweep)."""
        if (token := _token(value)) is None:
            return value
        return {SEALED: self._fernet.rotate(token.encode("ascii")).decode("ascii")}

    def seal(self, payload: dict[str, Any], paths: Iterable[Path]) -> dict[str, Any]:
        """A copy of `payload` with the value at each path sealed (paths that are absent are skipped)."""
        return _map_paths(payload, paths, lambda v: v if is_sealed(v) else self.seal_value(v))

    def open(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A copy of `payload` with every sealed value opened, wherever it is."""
        return _walk(payload, self.open_value)  # type: ignore[no-any-return]


def contains_sealed(value: Any) -> bool:
    """True if a sealed value sits anywhere in `value`."""
    if is_sealed(value):
        return True
    if isinstance(value, dict):
        return any(contains_sealed(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_sealed(v) for v in value)
    return False


def redact(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of `payload` fit to show: every sealed value replaced by `[redacted]`."""
    return _walk(payload, lambda v: REDACTED if is_sealed(v) else v)  # type: ignore[no-any-return]


def _walk(value: Any, leaf: Any) -> Any:
    if is_sealed(value):
        return leaf(value)
    if isinstance(value, dict):
        return {k: _walk(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, leaf) for v in value]
    return value


def _map_paths(payload: dict[str, Any], paths: Iterable[Path], change: Any) -> dict[str, Any]:
    out = dict(payload)
    for path in paths:
        node: Any = out
        for i, key in enumerate(path):
            if not isinstance(node, dict) or key not in node:
                break
            if i == len(path) - 1:
                node[key] = change(node[key])
            else:
                node[key] = dict(node[key]) if isinstance(node[key], dict) else node[key]
                node = node[key]
    return out
