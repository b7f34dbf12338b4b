"""Settings from FLAGWIRE_* variables, and log redaction (pure)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flagwire_server.config import ENV_VARS, Settings
from flagwire_server.observability.logs import (
    ConsoleFormatter,
    JsonFormatter,
    QuietStreamsFilter,
    redact,
)


def test_defaults_and_overrides() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.redis_prefix, s.max_buffer, s.workers) == (
        "127.0.0.1",
        8080,
        "fw",
        1024 * 1024,
        1,
    )
    s = Settings.from_env(
        {
            "FLAGWIRE_PORT": "9000",
            "FLAGWIRE_ALLOWED_ORIGINS": "https://a.example/, https://b",
            "FLAGWIRE_METRICS": "no",
            "FLAGWIRE_DATA_DIR": "/tmp/x",
        },
        port=9100,
        workers=None,
    )
    assert s.port == 9100  # the CLI option wins
    assert s.allowed_origins == ("https://a.example", "https://b")
    assert s.metrics is False
    assert s.data_dir == Path("/tmp/x")


def test_round_trip_through_the_environment() -> None:
    s = Settings.from_env(
        {}, redis_url="redis://x:1/0", admin_key="k", workers=3, allowed_origins=("https://a",)
    )
    assert Settings.from_env(s.to_env()) == s
    assert set(s.to_env()) <= set(ENV_VARS)
    assert s.redacted()["admin_key"] == "***"


@pytest.mark.parametrize(
    "env",
    [
        {"FLAGWIRE_PORT": "eighty"},
        {"FLAGWIRE_WORKERS": "0"},
        {"FLAGWIRE_LOG_FORMAT": "xml"},
        {"FLAGWIRE_MAX_BUFFER": "10"},
        {"FLAGWIRE_REDIS_PREFIX": "a{b}"},
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"FLAGWIRE|must|out of range"):
        Settings.from_env(env)


def test_redaction() -> None:
    assert redact("Authorization: Bearer fw_sdk_abc123") == "Authorization: Bearer ***"
    assert redact("key fw_admin_Zz-9_x leaked") == "key *** leaked"
    assert redact("nothing here") == "nothing here"
    record = logging.LogRecord(
        "flagwire.x", logging.INFO, "", 0, "got %s", ("fw_sdk_s3cret",), None
    )
    record.header = "Bearer fw_sdk_s3cret"
    for formatter in (JsonFormatter(), ConsoleFormatter()):
        assert "s3cret" not in formatter.format(record)


def test_an_accepted_stream_logs_no_line_of_its_own_at_info() -> None:
    """In a reconnect storm that was a line per client: websockets' "connection open"
    at INFO on uvicorn's logger went through (10,000 lines for 10,000 resumes)."""
    quiet = QuietStreamsFilter()
    for msg, args in (
        ('%s - "WebSocket %s" [accepted]', ("127.0.0.1:5", "/api/v1/stream")),
        ("connection open", ()),
    ):
        record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)
        assert not quiet.filter(record), msg
    warning = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "x", (), None)
    assert quiet.filter(warning)
