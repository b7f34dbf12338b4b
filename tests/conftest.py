"""Shared fixtures: a real Redis/Valkey for every I/O test, private ones on demand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.bytecode import cache_bytecode
from tests.support.redisproc import RedisProcess, shared_redis_url, stop_embedded

# Before the plugins below import the packages: they, the test modules and every process
# the tests start read and write compiled bytecode (see tests/support/bytecode.py).
cache_bytecode()

pytest_plugins = ["tests.support.server", "tests.support.inprocess"]


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
