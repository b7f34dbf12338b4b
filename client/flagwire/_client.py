"""``FlagClient``: a live subscription plus local, lock-free evaluation.

The client holds one attribute, ``_snapshot``, pointing at an immutable
:class:`~flagwire.core.evaluation.Snapshot`.  Evaluation reads it once and calls
``snapshot.evaluate``; the subscription replaces it with a new snapshot for
each change.  Replacing an attribute is atomic in Python, so evaluations on
any thread see either the old snapshot or the new one, never a mix, and need
no lock.

Why one module of about 690 lines (issue 11): it is one class, the client's
whole public surface (evaluation, status and its listeners, change
listeners, lifecycle), and much of it is the docstrings of that API.  What is
not public surface already lives in modules of its own: the I/O loop
(``_connection.py``), listener plumbing (``_changes.py``), persistence,
backoff, fleet insight, and the stream's rules (``core/subscription.py``).
Spreading ``FlagClient``'s methods over modules would scatter its documented
API without separating a concept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from types import TracebackType
from typing import Any, Final

from flagwire import _persistence
from flagwire._backoff import Backoff, BackoffSettings
from flagwire._changes import ChangeHub, ChangeStream, ValueWatch
from flagwire._connection import Subscription
from flagwire._insight import DEFAULT_REPORT_INTERVAL, InsightRecorder
from flagwire._offline import load_offline, snapshot_from_values
from flagwire._version import __version__
from flagwire.core.changes import FlagChange, diff
from flagwire.core.detail import ErrorKind, EvaluationDetail, Reason
from flagwire.core.errors import (
    AuthenticationError,
    ClientClosedError,
    ClientError,
    InitializationError,
    ProtocolError,
    RefusedError,
)
from flagwire.core.evaluation import Snapshot
from flagwire.core.subscription import Outcome, StreamState

__all__ = ["ClientStatus", "FlagClient"]

_log: Final = logging.getLogger("flagwire")


class ClientStatus(StrEnum):
    """Where the client's data stands.  Members are ``str``."""

    INITIALIZING = "INITIALIZING"  #: no data yet: evaluations serve the caller's defaults
    READY = "READY"  #: connected and current
    STALE = "STALE"  #: serving cached flags (disconnected, or from a persisted file)
    #: the server refused the stream for good (the key, its kind, the environment); not retrying
    UNAUTHORIZED = "UNAUTHORIZED"
    CLOSED = "CLOSED"  #: close() was called


StatusCallback = Callable[[ClientStatus], object]


class FlagClient:
    """A feature-flag client: subscribes to the server and evaluates flags from memory.

    Use it as an async context manager (or call :meth:`start` and
    :meth:`close`)::

        async with FlagClient("https://flags.example.com", sdk_key) as flags:
            if flags.bool_variation("new-checkout", {"key": user.id}, False):
                ...

    Args:
        url: the server's base URL (``http(s)://`` or ``ws(s)://``); not
            needed in offline mode.
        sdk_key: the environment's SDK key.
        start_timeout: how long :meth:`start` waits for the first data.
        fail_on_timeout: raise :class:`InitializationError` from :meth:`start`
            instead of carrying on with persisted data or defaults.
        persist_path: a file to keep the latest snapshot in (written
            atomically after changes, debounced) and to start from when the
            server cannot be reached.
        offline_path: run from this JSON file and never connect (a snapshot
            document or a simple ``{"flag": value}`` mapping).
        offline_values: run from these ``{"flag": value}`` values, never connect.
        heartbeat_timeout: a connection that answers no ping within this many
            seconds is considered dead and replaced.
        open_timeout: limit on each connection's handshake.
        backoff: the reconnect schedule (see ``docs/client.md``: a restarting
            server is retried at most ``restart_cap`` apart, an erroring one
            with exponential backoff, a loaded one when its ``Retry-After``
            says; all with full jitter).
        persist_debounce: seconds to wait after a change before writing the
            snapshot file, so a burst of changes costs one write.
        logger: where to report (default ``logging.getLogger("flagwire")``).
        app: the application name fleet insight shows this client under.
        instance: this instance's name there (default ``host:pid``).
        report_interval: seconds between the evaluation summaries sent to the
            server (``docs/insight.md``); ``None`` or ``0`` turns counting and
            reporting off.  Context keys are sent hashed, attributes never.

    Raises:
        ClientError: neither a server (``url`` and ``sdk_key``) nor offline
            data was given, or the URL is not usable.
    """

    def __init__(
        self,
        url: str | None = None,
        sdk_key: str | None = None,
        *,
        start_timeout: float = 5.0,
        fail_on_timeout: bool = False,
        persist_path: str | os.PathLike[str] | None = None,
        offline_path: str | os.PathLike[str] | None = None,
        offline_values: Mapping[str, Any] | None = None,
        heartbeat_timeout: float = 20.0,
        open_timeout: float = 10.0,
        backoff: BackoffSettings | None = None,
        persist_debounce: float = 0.5,
        logger: logging.Logger | None = None,
        app: str = "",
        instance: str = "",
        report_interval: float | None = DEFAULT_REPORT_INTERVAL,
    ) -> None:
        self._snapshot: Snapshot | None = None
        self._offline = offline_path is not None or offline_values is not None
        if not self._offline and (not url or not sdk_key):
            raise ClientError(
                "FlagClient needs a url and an sdk_key (or offline_path/offline_values)"
            )
        self.url = url
        self.start_timeout = start_timeout
        self.fail_on_timeout = fail_on_timeout
        self.persist_path = persist_path
        self.offline_path = offline_path
        self._offline_values = dict(offline_values) if offline_values is not None else None
        # flagwire.testing points this at its TestFlags
        self._offline_source: Callable[[], Snapshot] | None = None
        self.heartbeat_timeout = heartbeat_timeout
        self.persist_debounce = persist_debounce
        self.logger = logger or _log
        self._status = ClientStatus.INITIALIZING
        self._status_message = "not started"
        self._refusal: RefusedError | None = None
        self._fresh_at: float | None = None  # wall time the data was last known current
        self._status_callbacks: list[StatusCallback] = []
        self._waiters: list[tuple[frozenset[ClientStatus], asyncio.Future[ClientStatus]]] = []
        self._hub = ChangeHub(self.logger)
        self._state = StreamState()
        self._subscription: Subscription | None = None
        #: Counts for fleet insight; None when reporting is off or there is no server.
        self._insight: InsightRecorder | None = None
        if not self._offline and report_interval:
            if report_interval < 0.1:
                raise ClientError(f"report_interval must be at least 0.1 s, got {report_interval}")
            self._insight = InsightRecorder("flagwire-python", __version__, app, instance)
        #: The insight recorder's hot path (a deque's append), or None.
        self._record = self._insight.record if self._insight is not None else None
        if not self._offline:
            assert url is not None
            assert sdk_key is not None
            self._subscription = Subscription(
                url,
                sdk_key,
                self._state,
                self,
                backoff=Backoff(backoff),
                heartbeat_timeout=heartbeat_timeout,
                open_timeout=open_timeout,
                logger=self.logger,
                user_agent=f"flagwire-python/{__version__}",
                insight=self._insight,
                report_interval=report_interval or DEFAULT_REPORT_INTERVAL,
            )
        self._task: asyncio.Task[None] | None = None
        self._persist_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._dirty = False  # the persisted file is behind the data in use
        #: The thread writing the file, if one is: cancelling the task that awaits it does
        #: not stop it, so close() waits for it before writing the latest data after it.
        self._writing: asyncio.Future[None] | None = None
        self.rewinds = 0  #: times the server's store was found to have gone back in time
        self.start_status: ClientStatus | None = None  #: what :meth:`start` returned

    # --- evaluation: synchronous, no I/O, never raises, any thread ----------------

    def variation(self, key: str, context: Mapping[str, Any], default: Any) -> Any:
        """The value of flag ``key`` for ``context``; ``default`` on any error."""
        snap = self._snapshot
        if snap is None:
            return default
        detail = snap.evaluate(key, context, default)
        record = self._record
        if record is not None:
            record((key, detail, context))
        return detail.value

    def bool_variation(self, key: str, context: Mapping[str, Any], default: bool) -> bool:
        """The boolean value of flag ``key``; ``default`` if it is missing or not boolean."""
        snap = self._snapshot
        if snap is None:
            return default
        detail = snap.evaluate(key, context, default, bool)
        record = self._record
        if record is not None:
            record((key, detail, context))
        return detail.value  # type: ignore[no-any-return]

    def string_variation(self, key: str, context: Mapping[str, Any], default: str) -> str:
        """The string value of flag ``key``; ``default`` if it is missing or not a string."""
        snap = self._snapshot
        if snap is None:
            return default
        detail = snap.evaluate(key, context, default, str)
        record = self._record
        if record is not None:
            record((key, detail, context))
        return detail.value  # type: ignore[no-any-return]

    def number_variation(self, key: str, context: Mapping[str, Any], default: float) -> float:
        """The numeric value of flag ``key``; ``default`` if it is missing or not a number."""
        snap = self._snapshot
        if snap is None:
            return default
        detail = snap.evaluate(key, context, default, float)
        record = self._record
        if record is not None:
            record((key, detail, context))
        return detail.value  # type: ignore[no-any-return]

    def json_variation(self, key: str, context: Mapping[str, Any], default: Any) -> Any:
        """The JSON (object or array) value of flag ``key``; ``default`` otherwise.

        The value is shared with other evaluations: do not mutate it.
        """
        snap = self._snapshot
        if snap is None:
            return default
        detail = snap.evaluate(key, context, default, dict)
        record = self._record
        if record is not None:
            record((key, detail, context))
        return detail.value

    def variation_detail(
        self, key: str, context: Mapping[str, Any], default: Any
    ) -> EvaluationDetail:
        """The value of flag ``key`` with its variation index and the reason for it.

        Before the first data arrives the reason is ``ERROR`` with
        ``error_kind`` ``CLIENT_NOT_READY``.
        """
        snap = self._snapshot
        if snap is None:
            return EvaluationDetail(
                default, None, Reason.ERROR, error_kind=ErrorKind.CLIENT_NOT_READY
            )
        detail = snap.evaluate(key, context, default)
        record = self._record
        if record is not None:
            record((key, detail, context))
        return detail

    def track(self, event: str, context: Mapping[str, Any], value: float | None = None) -> None:
        """Record application event ``event`` (an error, a latency) for fleet insight.

        It is attributed to the variation ``context`` receives of each flag the
        server watches (a release being observed), so the server can compare
        variations; with no watched flags, or reporting off, it does nothing.

        Args:
            event: a name like a flag key (``"error"``, ``"latency-ms"``).
            context: the context the event happened to (its key is never sent).
            value: a number summed per variation (e.g. milliseconds), or None to count.

        Raises:
            ClientError: ``event`` is not a valid name, or ``value`` is not a number.
        """
        if self._insight is not None:
            self._insight.track(self._snapshot, event, context, value)

    def all_flags(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """Every flag's value for ``context`` (for bootstrapping a front end); {} before data."""
        snap = self._snapshot
        if snap is None:
            return {}
        return {key: detail.value for key, detail in snap.evaluate_all(context).items()}

    @property
    def snapshot(self) -> Snapshot | None:
        """The data evaluations currently use (None before the first data)."""
        return self._snapshot

    @property
    def version(self) -> int | None:
        """The environment version of the data in use (None before the first data)."""
        snap = self._snapshot
        return None if snap is None else snap.version

    # --- status --------------------------------------------------------------------

    @property
    def status(self) -> ClientStatus:
        """The client's current :class:`ClientStatus`."""
        return self._status

    @property
    def status_message(self) -> str:
        """A sentence saying why the client is in its status (e.g. why the key was refused)."""
        return self._status_message

    @property
    def refusal(self) -> RefusedError | None:
        """Why the server refused the stream for good (status UNAUTHORIZED), else None.

        An :class:`AuthenticationError` for a refused key (HTTP 401/403, close
        4001), a :class:`RefusedError` otherwise (e.g. HTTP 400 for an admin
        key used as an SDK key); ``detail`` is the server's own reason.
        """
        return self._refusal

    @property
    def data_age(self) -> float | None:
        """Seconds since the data was last known current: 0.0 when READY, None without data."""
        if self._snapshot is None:
            return None
        if self._status is ClientStatus.READY or self._fresh_at is None:
            return 0.0
        return max(0.0, time.time() - self._fresh_at)

    @property
    def connection_attempts(self) -> int:
        """How many times the client has tried to connect."""
        return self._subscription.attempts if self._subscription else 0

    @property
    def stats(self) -> dict[str, int]:
        """Counters for monitoring: connection attempts and connections, snapshots and
        changes received, resyncs asked for, malformed messages, store rewinds."""
        sub = self._subscription
        if sub is None:
            return {
                "attempts": 0,
                "connections": 0,
                "snapshots": 0,
                "changes": 0,
                "resyncs": 0,
                "malformed": 0,
                "rewinds": self.rewinds,
            }
        return {
            "attempts": sub.attempts,
            "connections": sub.connections,
            "snapshots": sub.snapshots,
            "changes": sub.changes,
            "resyncs": sub.resyncs,
            "malformed": sub.malformed,
            "rewinds": self.rewinds,
        }

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(status)`` on every status change (on the client's event loop).

        Returns:
            A function that unregisters the callback.
        """
        self._status_callbacks.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._status_callbacks.remove(callback)

        return remove

    async def wait_for_status(
        self,
        *statuses: ClientStatus,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ClientStatus:
        """Wait until the status is one of ``statuses`` (default READY) and return it.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            ClientClosedError: the client closed while waiting (unless CLOSED was awaited).
            RefusedError: the server refused the stream for good, so the status
                will not change (unless UNAUTHORIZED was awaited);
                :class:`AuthenticationError` for a refused key.
        """
        wanted = frozenset(statuses or (ClientStatus.READY,))
        if self._status in wanted:
            return self._status
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._status is ClientStatus.UNAUTHORIZED and self._refusal is not None:
            raise self._refusal
        future: asyncio.Future[ClientStatus] = asyncio.get_running_loop().create_future()
        entry = (wanted, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _set_status(self, status: ClientStatus, message: str) -> None:
        self._status_message = message
        if status is self._status:
            return
        self._status = status
        self.logger.log(
            logging.WARNING
            if status in (ClientStatus.STALE, ClientStatus.UNAUTHORIZED)
            else logging.INFO,
            "flagwire: status %s: %s",
            status,
            message,
        )
        for wanted, future in list(self._waiters):
            if future.done():
                continue
            if status in wanted:
                future.set_result(status)
            elif status is ClientStatus.CLOSED:
                future.set_exception(ClientClosedError("the client closed"))
            elif status is ClientStatus.UNAUTHORIZED and self._refusal is not None:
                future.set_exception(self._refusal)
        for callback in list(self._status_callbacks):
            try:
                callback(status)
            except Exception:
                self.logger.exception("flagwire: on_status callback %r failed", callback)

    # --- changes -------------------------------------------------------------------

    def on_change(
        self, callback: Callable[[FlagChange], object], key: str | None = None
    ) -> Callable[[], None]:
        """Call ``callback(change)`` for each change (of flag ``key`` only, if given).

        Callbacks run on the client's event loop; an exception is logged and
        does not stop other callbacks.

        Returns:
            A function that unregisters the callback.
        """
        return self._hub.add_callback(callback, key)

    def changes(self, key: str | None = None, *, maxsize: int = 1000) -> ChangeStream:
        """``async for change in flags.changes()``: each :class:`FlagChange` as it is applied.

        Args:
            key: only changes of this flag (or segment).
            maxsize: the iterator keeps at most this many unread changes; when
                the consumer falls behind the oldest are dropped (counted in
                ``.dropped``).  The iteration ends when the client closes.
        """
        stream = ChangeStream(key, maxsize)
        self._hub.add_stream(stream)
        return stream

    def watch(self, key: str, context: Mapping[str, Any], default: Any = None) -> ValueWatch:
        """``async for value in flags.watch(key, ctx)``: the current value, then each new one.

        Values are coalesced: a slow consumer sees the latest value, not every
        step.  The iteration ends when the client closes.
        """
        watch = ValueWatch(key, context, default, self._snapshot)
        self._hub.add_stream(watch)
        return watch

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> FlagClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self, timeout: float | None = None) -> ClientStatus:  # noqa: ASYNC109
        """Connect and wait for the first data (at most ``timeout``, default ``start_timeout``).

        Returns:
            What happened: ``READY`` (current data from the server), ``STALE``
            (the server did not answer in time; serving the persisted
            snapshot), ``INITIALIZING`` (no data: serving the caller's
            defaults while trying in the background) or ``UNAUTHORIZED``.

        Raises:
            ClientClosedError: the client was closed.
            InitializationError: no current data in time and ``fail_on_timeout``
                is set (the client is closed).
            AuthenticationError: the server refused the SDK key and
                ``fail_on_timeout`` is set (the client is closed).
            RefusedError: the server refused the stream for another reason
                retrying cannot fix (e.g. an admin key, HTTP 400) and
                ``fail_on_timeout`` is set (the client is closed).
            ClientError: the offline file cannot be read.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._started:
            return self._status
        self._started = True
        self._loop = asyncio.get_running_loop()
        if self._offline:
            if self._offline_source is not None:
                snap = self._offline_source()
            elif self.offline_path is not None:
                snap = load_offline(self.offline_path)
            else:
                snap = snapshot_from_values(self._offline_values or {})
            self._install(snap, diff(self._snapshot, snap))
            source = repr(os.fspath(self.offline_path)) if self.offline_path else "values"
            self._set_status(ClientStatus.READY, f"offline: serving flags from {source}")
            self.start_status = ClientStatus.READY
            return ClientStatus.READY
        persisted = self._load_persisted()
        if persisted is not None:
            self._state.snapshot = persisted[0]
        self._set_status(ClientStatus.INITIALIZING, "connecting")
        self._task = asyncio.create_task(self._run(), name="flagwire-subscription")
        wait = self.start_timeout if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            await self.wait_for_status(ClientStatus.READY, ClientStatus.UNAUTHORIZED, timeout=wait)
        status = self._status
        if status is ClientStatus.INITIALIZING:
            why = f"no data from the server within {wait}s" + (
                f" ({self._subscription.last_error})"
                if self._subscription and self._subscription.last_error
                else ""
            )
            if self.fail_on_timeout:
                await self.close()
                raise InitializationError(why)
            if persisted is not None and self._snapshot is None:
                snap, saved_at = persisted
                self._snapshot = snap
                self._fresh_at = saved_at
                self._set_status(
                    ClientStatus.STALE,
                    f"{why}; serving the persisted snapshot (version {snap.version}); still trying",
                )
            elif self._snapshot is not None:
                # A connection began catching up from the persisted version and did
                # not finish: what it applied is newer than the file, still not current.
                self._fresh_at = persisted[1] if persisted is not None else time.time()
                self._set_status(
                    ClientStatus.STALE,
                    f"{why}; serving the persisted snapshot "
                    f"updated to version {self._snapshot.version}; still trying",
                )
            else:
                self.logger.warning("flagwire: %s; serving defaults while still trying", why)
                self._status_message = f"{why}; serving defaults while still trying"
        elif status is ClientStatus.UNAUTHORIZED and self.fail_on_timeout:
            error = self._refusal or AuthenticationError(self._status_message)
            await self.close()
            raise error
        self.start_status = self._status
        return self._status

    def _load_persisted(self) -> tuple[Snapshot, float] | None:
        if self.persist_path is None:
            return None
        try:
            loaded = _persistence.load_snapshot(self.persist_path)
        except (OSError, ProtocolError) as exc:
            self.logger.warning(
                "flagwire: ignoring the persisted snapshot %r: %s",
                os.fspath(self.persist_path),
                exc,
            )
            return None
        if loaded is None:
            return None
        snap, _env, saved_at = loaded
        return snap, saved_at

    async def _run(self) -> None:
        assert self._subscription is not None
        while True:
            try:
                await self._subscription.run()
                return  # the key was refused
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the subscription for good
                self.logger.exception("flagwire: the subscription failed; restarting it")
                await asyncio.sleep(self._subscription.backoff.next_delay())

    async def close(self) -> None:
        """Stop the subscription and every task, flush the persisted file, end the iterators.

        Evaluations keep answering from the last data after close.  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._subscription is not None:  # the last interval's counts, while connected
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._subscription.report(), 1.0)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ptask, self._persist_task = self._persist_task, None
        if ptask is not None:
            ptask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ptask
        if self._writing is not None:  # a write cancelled above goes on in its thread
            with contextlib.suppress(Exception):
                await self._writing
        if self._dirty:
            await self._write_persisted()
        self._hub.close()
        self._set_status(ClientStatus.CLOSED, "closed")

    # --- what the subscription tells us (Listener) ----------------------------------------

    def connection_opened(self) -> None:
        self.logger.debug("flagwire: connected to %s", self.url)

    def outcome(self, out: Outcome) -> None:
        if out.rewound is not None:
            self.rewinds += 1
        if out.snapshot is not None:
            self._install(out.snapshot, out.changes)
        if out.caught_up:
            self._fresh_at = None
            self._set_status(ClientStatus.READY, f"connected, at version {self.version}")

    def connection_lost(self, why: str) -> None:
        if self._closed:
            return
        if self._status is ClientStatus.READY:
            self._fresh_at = time.time()
            self._set_status(ClientStatus.STALE, f"{why}; serving cached flags, reconnecting")
        else:
            self._status_message = f"{why}; reconnecting"

    def refused(self, error: RefusedError) -> None:
        if self._status is ClientStatus.READY:
            self._fresh_at = time.time()
        self._refusal = error
        self._set_status(ClientStatus.UNAUTHORIZED, str(error))

    # --- installing data -----------------------------------------------------------

    def _install(self, snapshot: Snapshot, changes: list[FlagChange]) -> None:
        self._snapshot = snapshot
        if changes:
            self._hub.publish(changes, snapshot)
            if self.persist_path is not None and not self._closed:
                self._dirty = True
                self._schedule_persist()

    def _schedule_persist(self) -> None:
        if self._persist_task is None or self._persist_task.done():
            self._persist_task = asyncio.get_running_loop().create_task(
                self._persist_later(), name="flagwire-persist"
            )

    async def _persist_later(self) -> None:
        await asyncio.sleep(self.persist_debounce)
        while self._dirty:
            await self._write_persisted()

    async def _write_persisted(self) -> None:
        snap, path = self._snapshot, self.persist_path
        self._dirty = False
        if snap is None or path is None:
            return
        self._writing = asyncio.ensure_future(
            asyncio.to_thread(_persistence.save_snapshot, path, snap, self._state.env or "")
        )
        try:
            await asyncio.shield(self._writing)
        except asyncio.CancelledError:
            self._dirty = True  # not known to be written: close() writes it again
            raise
        except OSError as exc:
            self.logger.warning(
                "flagwire: cannot write the snapshot to %r: %s", os.fspath(path), exc
            )

    def __repr__(self) -> str:
        return f"<FlagClient {self.url or 'offline'} {self._status} version={self.version}>"
