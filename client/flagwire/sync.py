"""``SyncFlagClient``: the flag client for code without an event loop (Flask, Django, WSGI).

It runs a :class:`~flagwire.FlagClient` on an event loop in a daemon thread of
its own; evaluations read the same immutable snapshot from any thread, with
no locks and no I/O::

    from flagwire.sync import SyncFlagClient

    flags = SyncFlagClient("https://flags.example.com", sdk_key)   # waits for data
    if flags.bool_variation("new-checkout", {"key": user.id}, False):
        ...

Safe across ``fork()``: a child process (a gunicorn worker forked from a
master that created the client with ``--preload``) keeps answering from the
data it inherited, and starts its own thread and subscription at once — it
never touches the parent's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from flagwire._client import ClientStatus, FlagClient
from flagwire.core.changes import FlagChange
from flagwire.core.detail import ErrorKind, EvaluationDetail, Reason
from flagwire.core.errors import ClientClosedError, RefusedError
from flagwire.core.evaluation import Snapshot

__all__ = ["SyncFlagClient"]

_T = TypeVar("_T")
_instances: weakref.WeakSet[SyncFlagClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncFlagClient:
    """A thread-backed :class:`~flagwire.FlagClient` with the same evaluation API.

    Creating it starts the thread and waits for the first data, like
    ``await FlagClient.start()``; :attr:`start_status` says what happened.

    Args:
        url: the server's base URL.
        sdk_key: the environment's SDK key.
        wait: wait for the first data in the constructor (else return at once
            and let the client become READY in the background).
        kwargs: everything else :class:`~flagwire.FlagClient` accepts
            (``start_timeout``, ``fail_on_timeout``, ``persist_path``,
            ``offline_path``, ``heartbeat_timeout``, ``backoff``...).

    Raises:
        InitializationError: no data in time and ``fail_on_timeout=True``.
        AuthenticationError: the key was refused and ``fail_on_timeout=True``
            (a :class:`~flagwire.RefusedError` for other refusals, e.g. an admin key).
        ClientError: bad arguments (see :class:`~flagwire.FlagClient`).
    """

    def __init__(
        self,
        url: str | None = None,
        sdk_key: str | None = None,
        *,
        wait: bool = True,
        **kwargs: Any,
    ) -> None:
        self._args = (url, sdk_key)
        self._kwargs = kwargs
        self._closed = False
        self._lock = threading.Lock()
        self._abandoned: list[object] = []  # a parent's loop and client, kept out of GC in a child
        self._change_callbacks: list[tuple[Callable[[FlagChange], object], str | None]] = []
        self._status_callbacks: list[Callable[[ClientStatus], object]] = []
        self.start_status: ClientStatus | None = None
        self.client = FlagClient(url, sdk_key, **kwargs)
        self._loop, self._thread = self._spawn()
        _instances.add(self)
        future = self._submit(self.client.start())
        if wait:
            self.start_status = future.result()

    # --- the loop thread ----------------------------------------------------------

    def _spawn(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="flagwire-sync", daemon=True
        )
        thread.start()
        return loop, thread

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _after_fork(self) -> None:
        """In a forked child: abandon the parent's thread and socket, start afresh."""
        if self._closed:
            return
        old = self.client
        # Never close or GC what we inherited: the socket is the parent's too.
        self._abandoned.append((old, self._loop, self._thread))
        self._lock = threading.Lock()
        client = FlagClient(*self._args, **self._kwargs)
        inherited: Snapshot | None = old.snapshot
        if inherited is not None:
            client._snapshot = inherited
            client._state.snapshot = inherited
        self.client = client
        for callback, key in self._change_callbacks:
            client.on_change(callback, key)
        for status_callback in self._status_callbacks:
            client.on_status(status_callback)
        self._loop, self._thread = self._spawn()
        self._submit(client.start())

    # --- evaluation (same as FlagClient: no I/O, never raises, any thread) -----------

    def variation(self, key: str, context: Mapping[str, Any], default: Any) -> Any:
        """See :meth:`flagwire.FlagClient.variation`."""
        return self.client.variation(key, context, default)

    def bool_variation(self, key: str, context: Mapping[str, Any], default: bool) -> bool:
        """See :meth:`flagwire.FlagClient.bool_variation`."""
        return self.client.bool_variation(key, context, default)

    def string_variation(self, key: str, context: Mapping[str, Any], default: str) -> str:
        """See :meth:`flagwire.FlagClient.string_variation`."""
        return self.client.string_variation(key, context, default)

    def number_variation(self, key: str, context: Mapping[str, Any], default: float) -> float:
        """See :meth:`flagwire.FlagClient.number_variation`."""
        return self.client.number_variation(key, context, default)

    def json_variation(self, key: str, context: Mapping[str, Any], default: Any) -> Any:
        """See :meth:`flagwire.FlagClient.json_variation`."""
        return self.client.json_variation(key, context, default)

    def variation_detail(
        self, key: str, context: Mapping[str, Any], default: Any
    ) -> EvaluationDetail:
        """See :meth:`flagwire.FlagClient.variation_detail`."""
        if self._closed and self.client.snapshot is None:
            return EvaluationDetail(
                default, None, Reason.ERROR, error_kind=ErrorKind.CLIENT_NOT_READY
            )
        return self.client.variation_detail(key, context, default)

    def track(self, event: str, context: Mapping[str, Any], value: float | None = None) -> None:
        """See :meth:`flagwire.FlagClient.track`."""
        self.client.track(event, context, value)

    def all_flags(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """See :meth:`flagwire.FlagClient.all_flags`."""
        return self.client.all_flags(context)

    @property
    def snapshot(self) -> Snapshot | None:
        """The data evaluations currently use."""
        return self.client.snapshot

    # --- status and changes --------------------------------------------------------

    @property
    def status(self) -> ClientStatus:
        """See :attr:`flagwire.FlagClient.status`."""
        return self.client.status

    @property
    def status_message(self) -> str:
        return self.client.status_message

    @property
    def refusal(self) -> RefusedError | None:
        """See :attr:`flagwire.FlagClient.refusal`."""
        return self.client.refusal

    @property
    def data_age(self) -> float | None:
        """See :attr:`flagwire.FlagClient.data_age`."""
        return self.client.data_age

    @property
    def stats(self) -> dict[str, int]:
        return self.client.stats

    def wait_for_status(
        self, *statuses: ClientStatus, timeout: float | None = None
    ) -> ClientStatus:
        """Block until the status is one of ``statuses`` (default READY).

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            ClientClosedError: the client is closed.
            RefusedError: the server refused the stream for good
                (:class:`~flagwire.AuthenticationError` for a refused key).
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        future = self._submit(self.client.wait_for_status(*statuses, timeout=timeout))
        return future.result()

    def on_change(self, callback: Callable[[FlagChange], object], key: str | None = None) -> None:
        """Call ``callback(change)`` on each change; it runs on the client's own thread."""
        self._change_callbacks.append((callback, key))
        self._loop.call_soon_threadsafe(self.client.on_change, callback, key)

    def on_status(self, callback: Callable[[ClientStatus], object]) -> None:
        """Call ``callback(status)`` on each status change, on the client's own thread."""
        self._status_callbacks.append(callback)
        self._loop.call_soon_threadsafe(self.client.on_status, callback)

    # --- lifecycle -----------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Close the subscription and stop the thread.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _instances.discard(self)
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._submit(self.client.close()).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> SyncFlagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncFlagClient {self.client!r}>"
