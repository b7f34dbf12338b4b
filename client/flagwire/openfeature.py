"""An OpenFeature provider backed by a flagwire client (extra ``flagwire[openfeature]``).

::

    from openfeature import api
    from flagwire.openfeature import FlagwireProvider
    from flagwire.sync import SyncFlagClient

    api.set_provider(FlagwireProvider(SyncFlagClient(url, sdk_key)))
    client = api.get_client()
    client.get_boolean_value("new-checkout", False, EvaluationContext("user-1", {"plan": "pro"}))

The provider works with a :class:`~flagwire.FlagClient` (started in your
event loop) or a :class:`~flagwire.sync.SyncFlagClient`.  Evaluation is
local, so the async resolvers (``get_boolean_value_async``...) answer at once.

Mapping:

* context: ``targeting_key`` becomes the flagwire context ``key``, attributes
  are copied as they are;
* reasons: OFF → DISABLED, TARGET_MATCH and RULE_MATCH → TARGETING_MATCH,
  FALLTHROUGH → SPLIT when the flag's fallthrough is a rollout, else DEFAULT,
  PREREQUISITE_FAILED passes through as a custom reason, ERROR → ERROR;
* errors: FLAG_NOT_FOUND → FLAG_NOT_FOUND, WRONG_TYPE → TYPE_MISMATCH,
  MALFORMED_FLAG → PARSE_ERROR, CLIENT_NOT_READY → PROVIDER_NOT_READY,
  INVALID_CONTEXT → TARGETING_KEY_MISSING (or INVALID_CONTEXT), others → GENERAL;
* variant: the variation index as a string; metadata: ``flag_version``,
  ``env_version``, and ``stale: true`` while the client serves cached data;
* events: READY, STALE, ERROR (PROVIDER_FATAL when the key is refused), and
  CONFIGURATION_CHANGED with the keys of the flags that changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderFatalError, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from flagwire._client import ClientStatus
from flagwire._insight import InsightRecorder
from flagwire.core.changes import FlagChange
from flagwire.core.detail import ErrorKind, EvaluationDetail, Reason
from flagwire.core.evaluation import Snapshot

__all__ = ["FlagwireProvider"]


class _Client(Protocol):
    @property
    def snapshot(self) -> Snapshot | None: ...
    @property
    def status(self) -> ClientStatus: ...
    @property
    def status_message(self) -> str: ...


_ERRORS: dict[str, ErrorCode] = {
    ErrorKind.FLAG_NOT_FOUND: ErrorCode.FLAG_NOT_FOUND,
    ErrorKind.WRONG_TYPE: ErrorCode.TYPE_MISMATCH,
    ErrorKind.MALFORMED_FLAG: ErrorCode.PARSE_ERROR,
    ErrorKind.CLIENT_NOT_READY: ErrorCode.PROVIDER_NOT_READY,
    ErrorKind.INVALID_CONTEXT: ErrorCode.INVALID_CONTEXT,
    ErrorKind.PREREQUISITE_CYCLE: ErrorCode.GENERAL,
}


def _insight_of(client: Any) -> InsightRecorder | None:
    """The fleet-insight recorder of a FlagClient or of a SyncFlagClient's inner client."""
    inner = getattr(client, "client", client)
    recorder = getattr(inner, "_insight", None)
    return recorder if isinstance(recorder, InsightRecorder) else None


def _context(ctx: EvaluationContext | None) -> dict[str, Any]:
    if ctx is None:
        return {}
    out: dict[str, Any] = dict(ctx.attributes)
    if ctx.targeting_key is not None:
        out["key"] = ctx.targeting_key
    return out


class FlagwireProvider(AbstractProvider):
    """OpenFeature provider over a :class:`~flagwire.FlagClient` or
    :class:`~flagwire.sync.SyncFlagClient`.

    Args:
        client: a started (or starting) flagwire client; the provider never
            closes it unless ``close_client`` is set.
        close_client: close the client in :meth:`shutdown` (only a
            :class:`~flagwire.sync.SyncFlagClient` can be closed from there).
    """

    def __init__(self, client: Any, *, close_client: bool = False) -> None:
        super().__init__()
        self.client = client
        self.close_client = close_client
        self._hooked = False
        self._insight = _insight_of(client)

    def get_metadata(self) -> Metadata:
        return Metadata(name="flagwire")

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """OpenFeature tracking: :meth:`flagwire.FlagClient.track` (the value is summed)."""
        value = tracking_event_details.value if tracking_event_details is not None else None
        self.client.track(tracking_event_name, _context(evaluation_context), value)

    # --- lifecycle and events --------------------------------------------------------

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Subscribe to the client's status and changes.

        Raises:
            ProviderFatalError: the server refused the SDK key.
            ProviderNotReadyError: no data yet (READY follows as an event).
        """
        if not self._hooked:
            self._hooked = True
            self._register()
        status = self.client.status
        if status is ClientStatus.UNAUTHORIZED:
            raise ProviderFatalError(self.client.status_message)
        if self.client.snapshot is None:
            raise ProviderNotReadyError(
                f"flagwire client is {status}: {self.client.status_message}"
            )

    def _register(self) -> None:
        client = self.client
        inner = getattr(client, "client", client)  # SyncFlagClient wraps a FlagClient
        loop = getattr(client, "_loop", None)

        def hook() -> None:
            inner._hub.add_batch_callback(self._changed)
            inner.on_status(self._status_changed)

        if loop is not None:
            loop.call_soon_threadsafe(hook)
        else:
            hook()

    def _changed(self, changes: list[FlagChange]) -> None:
        keys = sorted({c.key for c in changes if c.kind == "flag"})
        if any(c.kind == "segment" for c in changes):
            snap = self.client.snapshot
            keys = sorted(snap.flags) if snap is not None else keys  # any flag may use it
        if keys:
            self.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=keys))

    def _status_changed(self, status: ClientStatus) -> None:
        message = self.client.status_message
        if status is ClientStatus.READY:
            self.emit_provider_ready(ProviderEventDetails(message=message))
        elif status is ClientStatus.STALE:
            self.emit_provider_stale(ProviderEventDetails(message=message))
        elif status is ClientStatus.UNAUTHORIZED:
            self.emit_provider_error(
                ProviderEventDetails(message=message, error_code=ErrorCode.PROVIDER_FATAL)
            )

    def shutdown(self) -> None:
        if self.close_client and hasattr(self.client, "close"):
            result = self.client.close()
            if hasattr(result, "close"):  # an un-awaited coroutine of an async client
                result.close()

    # --- resolution ------------------------------------------------------------------

    def _resolve(
        self, key: str, default: Any, ctx: EvaluationContext | None, kind: type
    ) -> FlagResolutionDetails[Any]:
        snap: Snapshot | None = self.client.snapshot
        context = _context(ctx)
        if snap is None:
            return FlagResolutionDetails(
                default, ErrorCode.PROVIDER_NOT_READY, "flagwire has no data yet", OFReason.ERROR
            )
        detail = snap.evaluate(key, context, default, kind)
        insight = self._insight
        if insight is not None:
            insight.count(key, detail, context)
        value = detail.value
        if detail.reason != Reason.ERROR:
            if kind is int and (
                type(value) is not int and not (isinstance(value, float) and value.is_integer())
            ):
                return FlagResolutionDetails(
                    default,
                    ErrorCode.TYPE_MISMATCH,
                    f"flag {key!r} serves {value!r}, not an integer",
                    OFReason.ERROR,
                )
            if kind is int:
                value = int(value)
            elif kind is float:
                value = float(value)
        return self._details(key, snap, detail, value, "key" in context)

    def _details(
        self, key: str, snap: Snapshot, detail: EvaluationDetail, value: Any, has_key: bool
    ) -> FlagResolutionDetails[Any]:
        doc = snap.flags.get(key)
        meta: dict[str, bool | int | float | str] = {"env_version": snap.version}
        if doc is not None and type(doc.get("version")) is int:
            meta["flag_version"] = doc["version"]
        if self.client.status is not ClientStatus.READY:
            meta["stale"] = True
        reason = detail.reason
        if reason == Reason.ERROR:
            kind = detail.error_kind or ""
            code = _ERRORS.get(kind, ErrorCode.GENERAL)
            if kind == ErrorKind.INVALID_CONTEXT and not has_key:
                code = ErrorCode.TARGETING_KEY_MISSING
            return FlagResolutionDetails(
                value, code, f"{kind}: flag {key!r}", OFReason.ERROR, None, meta
            )
        of_reason: str
        if reason == Reason.OFF:
            of_reason = OFReason.DISABLED
        elif reason in (Reason.TARGET_MATCH, Reason.RULE_MATCH):
            of_reason = OFReason.TARGETING_MATCH
        elif reason == Reason.FALLTHROUGH:
            fallthrough = doc.get("fallthrough") if doc is not None else None
            split = isinstance(fallthrough, dict) and "rollout" in fallthrough
            of_reason = OFReason.SPLIT if split else OFReason.DEFAULT
        else:
            of_reason = str(reason)
        variant = None if detail.variation_index is None else str(detail.variation_index)
        return FlagResolutionDetails(value, None, None, of_reason, variant, meta)

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, bool)

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, str)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, int)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, float)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._resolve(flag_key, default_value, evaluation_context, dict)
