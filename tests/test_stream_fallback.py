"""The stream under plain uvicorn (no flagwire protocol class): the slower fallback path still
delivers hello, snapshot and live changes in order, and closes slow or bad streams."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from tests.support.builders import flag
from tests.support.server import ServerProcess
from tests.support.streamclient import StreamClient

pytestmark = pytest.mark.timeout(60)


class PlainUvicorn(ServerProcess):
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "flagwire_server.app:create_app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ws",
            "websockets-sansio",
            "--no-access-log",
        ]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        assert self.redis_url
        env["FLAGWIRE_REDIS_URL"] = self.redis_url
        return env


@pytest.fixture
def plain(
    redis_url: str, redis_prefix: str, admin_key: str, make_server: Callable[..., ServerProcess]
) -> Iterator[ServerProcess]:
    # (make_server only so that this test's Redis keys are cleaned up afterwards)
    srv = PlainUvicorn(redis_url, prefix=redis_prefix, admin_key=admin_key)
    srv.start()
    yield srv
    srv.kill()


async def test_fallback_path_streams_in_order(plain: ServerProcess) -> None:
    plain.api("PUT", "/environments/production/flags/f", flag("f"))
    clients = [StreamClient(plain.ws_url, plain.admin_key, env="production") for _ in range(3)]
    for c in clients:
        await c.connect()
    try:
        for i in range(20):
            body = plain.api("PATCH", "/environments/production/flags/f", {"on": bool(i % 2)})
        for c in clients:
            await c.wait_version(body["env_version"])
            assert c.gaps == []
            assert [m.type for m in c.messages[:2]] == ["hello", "snapshot"]
            assert c.flags["f"]["on"] is True
        await clients[0].send("garbage")
        assert await clients[0].wait_closed() == 4002
    finally:
        for c in clients:
            await c.close()
