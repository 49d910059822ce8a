"""Secret payload fields: sealed at rest, opened only with a configured key, redacted when shown."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from shared.core import json
from shared.core.errors import PermanentJobError
from shared.core.settings import CryptoConfig
from shared.infra.sealing import REDACTED, SEALED, Sealer, redact
from shared.jobtypes.email import EmailPayload
from shared.jobtypes.webhook import WebhookPayload


def test_webhook_headers_are_sealed_and_nothing_else() -> None:
    sealer = Sealer([Fernet.generate_key()])
    payload = WebhookPayload(url="https://example.com/hook", event="e", headers={"X-Token": "tok-123"})

    sealed = sealer.seal(payload.model_dump(mode="json"), payload.secret_paths())

    assert set(sealed["headers"]) == {SEALED}
    assert b"tok-123" not in json.dumps(sealed)
    assert sealed["url"] == "https://example.com/hook"
    assert sealer.open(sealed)["headers"] == {"X-Token": "tok-123"}
    assert redact(sealed)["headers"] == REDACTED


def test_email_context_values_the_caller_flags_are_sealed() -> None:
    sealer = Sealer([Fernet.generate_key()])
    payload = EmailPayload(
        to=["a@example.com"], subject="s", template="welcome",
        context={"name": "Ann", "reset_link": "https://x/reset?k=s3cr3t"}, secret_context=["reset_link"],
    )  # fmt: skip

    sealed = sealer.seal(payload.model_dump(mode="json"), payload.secret_paths())

    assert sealed["context"]["name"] == "Ann"
    assert b"s3cr3t" not in json.dumps(sealed)
    assert sealer.open(sealed)["context"]["reset_link"] == "https://x/reset?k=s3cr3t"
    assert payload.context["reset_link"] == "https://x/reset?k=s3cr3t"  # the original is untouched


def test_sealing_twice_does_not_wrap_a_sealed_value_again() -> None:
    sealer = Sealer([Fernet.generate_key()])
    once = sealer.seal({"headers": {"a": "b"}}, [("headers",)])
    assert sealer.seal(once, [("headers",)]) == once


def test_a_rotated_key_still_opens_old_values_and_rotation_moves_them_to_the_new_key() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed = Sealer([old]).seal({"headers": {"a": "b"}}, [("headers",)])

    rotated_sealer = Sealer([new, old])
    assert rotated_sealer.open(sealed) == {"headers": {"a": "b"}}

    moved = rotated_sealer.rotate_value(sealed["headers"])
    assert Sealer([new]).open({"headers": moved}) == {"headers": {"a": "b"}}


def test_a_value_sealed_with_an_unknown_key_fails_without_retry() -> None:
    sealed = Sealer([Fernet.generate_key()]).seal({"headers": {"a": "b"}}, [("headers",)])
    with pytest.raises(PermanentJobError) as caught:
        Sealer([Fernet.generate_key()]).open(sealed)
    assert caught.value.type_name == "SecretUndecryptable"


def test_keys_come_from_settings_newest_first() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed = Sealer([old]).seal({"h": 1}, [("h",)])
    config = CryptoConfig(keys=SecretStr(f"{new.decode()}, {old.decode()}"))
    assert Sealer.from_config(config).open(sealed) == {"h": 1}


def test_secret_fields_are_flagged_in_the_published_schema() -> None:
    schema = WebhookPayload.model_json_schema()
    assert schema["properties"]["headers"]["x-secret"] is True
