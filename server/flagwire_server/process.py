"""Process tuning for many long-lived connections (issue 6's measurements).

* The open-file limit: with the common soft limit of 1,024 a server silently
  drops every connection past ~1,000.  The soft limit is raised to the hard
  limit at start, and a warning says so when that is still small.
* The cyclic garbage collector: with thousands of long-lived connection
  objects a full collection stalls the process for most of a second.  After
  start-up everything alive is frozen out of the collector (``gc.freeze``)
  and the generation thresholds are raised so full collections are rare.
* glibc's heap: asyncio copies what a slow client has not read into a
  per-connection buffer, so hundreds of streams that stop reading during a
  burst of big changes hold hundreds of MiB.  glibc raises its mmap threshold
  each time such a buffer is freed, after which the next ones come from the
  heap and stay resident after the streams are gone (measured: 62 → 232 MiB
  and still 232 after they closed).  A fixed threshold keeps every large
  buffer in its own mapping, returned when freed (84 MiB after they closed).
  The flip side: every allocation above it that the heap's top cannot hold
  is an mmap, page faults and an munmap, so hot paths must stay below it —
  a stream's socket reads do (``stream/uvicorn_fence.py``, ``READ_SIZE``;
  asyncio's 256 KiB reads cost 2.2 page faults per client per change at
  10,000 clients).
* Shutdown: uvicorn drains every open HTTP response before the lifespan's
  shutdown runs, and an event stream never ends by itself; so the app is told
  when SIGTERM/SIGINT arrives (:func:`on_exit_signal`) and ends its streams
  then, rather than holding a restart for the whole drain time.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

__all__ = ["USEFUL_NOFILE", "fix_mmap_threshold", "freeze_gc", "on_exit_signal", "raise_nofile"]

log = logging.getLogger("flagwire.process")

#: Below this many descriptors a server cannot hold a useful number of streams.
USEFUL_NOFILE = 16_384
#: Allocations from this size up get their own mapping (glibc's initial default).
MMAP_THRESHOLD: Final = 128 * 1024
_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter number


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit: %s", exc)
    if soft != resource.RLIM_INFINITY and soft < USEFUL_NOFILE:
        log.warning(
            "open-file limit is %d: this process can hold at most about %d streams; "
            "raise it (ulimit -n / LimitNOFILE=) for more",
            soft,
            max(0, soft - 64),
            extra={"nofile": soft},
        )
    return int(soft)


def freeze_gc() -> None:
    """Move everything alive after start-up out of the collector's reach; collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold so freed large buffers go back to the OS (see above).

    Returns False where there is no glibc (musl, macOS): nothing is changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


def on_exit_signal(callback: Callable[[], None]) -> bool:
    """Also run ``callback`` on the running loop when SIGTERM or SIGINT arrives.

    The handlers in place (uvicorn's, which start its shutdown) still run first.
    Call it from the lifespan's start-up, after the server has installed them;
    uvicorn restores its own on exit, so nothing needs undoing.  Returns False
    (nothing installed) off the main thread, e.g. a server run in a test thread,
    or where no Python handler is in place to chain to.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    installed = False
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # the default action or ignored: not a server's shutdown; leave it

        def handler(
            signum: int,
            frame: FrameType | None,
            previous: Callable[[int, FrameType | None], object] = previous,
        ) -> None:
            previous(signum, frame)
            loop.call_soon_threadsafe(callback)

        signal.signal(sig, handler)
        installed = True
    return installed
