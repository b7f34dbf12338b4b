"""The exception tree of the ``flagwire`` package.

::

    FlagwireError
    ├── ProtocolError          a frame that is not a valid flagwire message
    ├── ValidationError        a flag or segment document that breaks the model
    └── ClientError            raised by FlagClient and friends
        ├── RefusedError          the server refused the stream for good (HTTP 400/404)
        │   └── AuthenticationError   the server refused the SDK key (HTTP 401/403, close 4001)
        ├── InitializationError   no data within the start-up timeout (fail_on_timeout=True)
        └── ClientClosedError     the client was used after close()

Errors from ``websockets`` and the OS are translated into these at the client's
boundary; evaluation never raises at all.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClientClosedError",
    "ClientError",
    "FlagwireError",
    "InitializationError",
    "ProtocolError",
    "RefusedError",
    "ValidationError",
]


class FlagwireError(Exception):
    """Root of every exception flagwire raises on purpose."""


class ProtocolError(FlagwireError):
    """A frame could not be decoded into a flagwire message; the text says why."""


class ValidationError(FlagwireError):
    """A flag or segment document is invalid.

    ``errors`` lists ``(path, message)`` pairs such as
    ``("rules[1].clauses[0].op", 'unknown operator "startswith"; expected one of ...')``.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in errors))


class ClientError(FlagwireError):
    """Base of the errors raised by the client."""


class RefusedError(ClientError):
    """The server refused the stream for a reason retrying cannot fix; the client stops.

    The message ends with the server's own reason (its problem body's
    ``detail``, e.g. "an admin key or console session must pass ?env=NAME").

    Attributes:
        status: the HTTP status of the refused handshake (None for a close code).
        code: the problem body's ``code`` (e.g. ``env_required``), or "".
        detail: the server's reason, or "".
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "", detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail


class AuthenticationError(RefusedError):
    """The server refused the SDK key (unknown, revoked, wrong kind or environment)."""


class InitializationError(ClientError):
    """The first snapshot did not arrive in time and the caller asked to fail."""


class ClientClosedError(ClientError):
    """The client was closed."""
