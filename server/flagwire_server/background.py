"""Background loops end when asked, even if their cancellation was lost.

On Python 3.11 ``asyncio.wait_for`` returns the inner result and drops a
cancellation that arrives as the inner call completes.  redis-py sends every
command through it when a socket timeout is set (the server sets one:
``store/redisurl.py`` ``COMMAND_TIMEOUT_S``), so a loop of the form
``while True: await redis_call(); await asyncio.sleep(x)`` that is stopped only
by ``task.cancel()`` could miss the cancel and run on forever, and shutdown
would wait for it.  ``Task.cancelling()`` keeps counting the request even when
the ``CancelledError`` never arrived, so every background loop checks it after
its awaits and ends by itself.
"""

from __future__ import annotations

import asyncio

__all__ = ["stop_requested"]


def stop_requested() -> bool:
    """Whether the running task was cancelled (whether or not the error reached it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
