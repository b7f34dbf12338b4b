"""Logging: JSON lines for machines, short lines for people, and never a key.

``FLAGWIRE_LOG_FORMAT=json`` writes one JSON object per line (``ts``,
``level``, ``logger``, ``msg`` and the record's extra fields);
``console`` writes ``HH:MM:SS level logger: message key=value``.  Unset, the
format is console when stderr is a terminal and JSON otherwise (containers,
systemd, CI).  Both formatters pass every message and extra value through
:func:`redact`, which masks ``Bearer`` credentials and anything shaped like a
flagwire secret (``fw_sdk_…``, ``fw_admin_…``) — keys never travel in URLs,
so uvicorn's access log (path and query) holds none either.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import re
from typing import Any, Final

import orjson

from flagwire_server.config import Settings

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "QuietStreamsFilter",
    "configure",
    "log_config",
    "redact",
]

_SECRET_RE: Final = re.compile(r"(?i)\b(bearer\s+)[^\s,;\"']+|\bfw_(?:sdk|admin)_[A-Za-z0-9_\-]+")
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


def redact(text: str) -> str:
    """Mask credentials in ``text``."""
    if "fw_" not in text and "earer" not in text:
        return text
    return _SECRET_RE.sub(lambda m: (m.group(1) or "") + "***", text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for k, v in _extras(record).items():
            out.setdefault(k, _clean(v))
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


class ConsoleFormatter(logging.Formatter):
    """``12:00:01 info  flagwire.fanout: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={_clean(v)}" for k, v in _extras(record).items())
        line = f"{ts} {record.levelname.lower():<7} {record.name}: {redact(record.getMessage())}"
        if extras:
            line += "  " + extras
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


_PER_HANDSHAKE: Final = (
    '"WebSocket %s" [accepted]',  # uvicorn, each accepted stream
    '"WebSocket %s" %d',  # uvicorn, each denial response (flagwire.stream logs those)
    "connection rejected (%d %s)",  # websockets, each non-101 response, again
    "connection open",  # websockets, each accepted stream, on uvicorn's logger
)


class QuietStreamsFilter(logging.Filter):
    """Drop uvicorn's and websockets' line per WebSocket handshake.

    Thousands arrive in a reconnect storm or a flood of bad keys.  Refused
    handshakes are logged by ``flagwire.stream`` instead, with the reason and
    summarised under a flood; at debug level everything is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or _FLAGWIRE.isEnabledFor(logging.DEBUG):
            return True
        msg = record.msg
        return not (isinstance(msg, str) and msg.endswith(_PER_HANDSHAKE))


_FLAGWIRE: Final = logging.getLogger("flagwire")


def handshake_lines_dropped(logger: logging.Logger) -> bool:
    """Whether :class:`QuietStreamsFilter` would drop every per-handshake line on ``logger``.

    Then code of ours that would write one (the fence's fast accept) need not make
    it: a record built only to be dropped was about 7 µs, two per accepted stream,
    5% of a resume in a reconnect storm.  False with any other logging set-up.
    """
    return (
        not logger.propagate
        and bool(logger.handlers)
        and not _FLAGWIRE.isEnabledFor(logging.DEBUG)
        and all(any(isinstance(f, QuietStreamsFilter) for f in h.filters) for h in logger.handlers)
    )


def log_config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict (also given to uvicorn for its workers)."""
    formatter = "json" if settings.json_logs else "console"
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "flagwire_server.observability.logs.JsonFormatter"},
            "console": {"()": "flagwire_server.observability.logs.ConsoleFormatter"},
        },
        "filters": {
            "quiet_streams": {"()": "flagwire_server.observability.logs.QuietStreamsFilter"}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": formatter,
                "stream": "ext://sys.stderr",
                "filters": ["quiet_streams"],
            },
        },
        "loggers": {
            "flagwire": {"level": level, "handlers": ["stderr"], "propagate": False},
            "uvicorn": {"level": level, "handlers": ["stderr"], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"level": level, "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


def configure(settings: Settings) -> None:
    logging.config.dictConfig(log_config(settings))
