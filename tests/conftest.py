"""Shared fixtures: a real Redis/Valkey for every I/O test, private ones on demand."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.support.bytecode import cache_bytecode
from tests.support.redisproc import RedisProcess, shared_redis_url, stop_embedded

# Before the plugins below import the packages: they, the test modules and every process
# the tests start read and write compiled bytecode (see tests/support/bytecode.py).
cache_bytecode()

pytest_plugins = ["tests.support.server", "tests.support.inprocess"]


def pytest_configure(config: pytest.Config) -> None:
    # A run ended by SIGTERM (a CI or `timeout` limit) unwinds as Ctrl-C does: pytest then
    # tears every fixture down, so the servers and stores the tests started (each in a
    # session of its own) do not outlive it.  Python's default would end at once.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The suite's shared store: REDIS_URL, the machine's Redis, or an embedded Valkey."""
    yield shared_redis_url()
    stop_embedded()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests sharing one Redis never meet."""
    return f"fwt{uuid.uuid4().hex[:10]}"


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A Redis/Valkey process of this test's own, which it may stop, kill and restart."""
    proc = RedisProcess().start()
    try:
        yield proc
    finally:
        proc.close()
