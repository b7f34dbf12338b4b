"""flagwire: real-time feature flags.

The async client::

    from flagwire import FlagClient

    async with FlagClient("https://flags.example.com", sdk_key) as flags:
        if flags.bool_variation("new-checkout", {"key": user_id}, False):
            ...

Public modules: :mod:`flagwire.testing` (flags set in code for your tests),
:mod:`flagwire.sync` (a thread-backed client for WSGI apps) and
:mod:`flagwire.openfeature` (an OpenFeature provider, extra ``[openfeature]``).
"""

from flagwire._backoff import BackoffSettings
from flagwire._changes import ChangeStream, ValueWatch
from flagwire._client import ClientStatus, FlagClient
from flagwire._version import __version__
from flagwire.core.changes import FlagChange
from flagwire.core.detail import ErrorKind, EvaluationDetail, Reason
from flagwire.core.errors import (
    AuthenticationError,
    ClientClosedError,
    ClientError,
    FlagwireError,
    InitializationError,
    ProtocolError,
    RefusedError,
    ValidationError,
)
from flagwire.core.evaluation import Snapshot

__all__ = [
    "AuthenticationError",
    "BackoffSettings",
    "ChangeStream",
    "ClientClosedError",
    "ClientError",
    "ClientStatus",
    "ErrorKind",
    "EvaluationDetail",
    "FlagChange",
    "FlagClient",
    "FlagwireError",
    "InitializationError",
    "ProtocolError",
    "Reason",
    "RefusedError",
    "Snapshot",
    "ValidationError",
    "ValueWatch",
    "__version__",
]
