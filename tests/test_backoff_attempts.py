"""What one reconnect attempt costs the client: the proxy is looked up once, not per attempt.

A fleet retrying during an outage makes thousands of attempts a second.
websockets looks the proxy up in the environment on every connect by
default, which was about 60% of the CPU of a refused attempt (187-256 µs
against 81-84 µs without it, measured on the 2-core test machine).
"""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from flagwire import BackoffSettings, FlagClient
from tests.support.polling import poll
from tests.support.redisproc import free_port

#: Retry at once and often: many attempts in a fraction of a second.
QUICK = BackoffSettings(initial=0.005, cap=0.01, restart_cap=0.01, going_away=0.01)


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "socks_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_the_proxy_is_looked_up_once_however_many_attempts(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    lookups = 0
    real = urllib.request.getproxies

    def counting() -> dict[str, str]:
        nonlocal lookups
        lookups += 1
        return real()

    clean_proxy_env.setattr(urllib.request, "getproxies", counting)
    flags = FlagClient(
        f"http://127.0.0.1:{free_port()}", "k", backoff=QUICK, start_timeout=0.01
    )  # nobody listens: every attempt is refused
    try:
        await flags.start()
        await poll(lambda: flags.connection_attempts >= 20, 10, "20 refused attempts")
        assert lookups <= 1, f"{lookups} proxy lookups for {flags.connection_attempts} attempts"
    finally:
        await flags.close()


async def test_a_proxy_from_the_environment_is_still_used(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY still applies (looked up when the client starts): it is sent a CONNECT."""
    requests: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readline())
        while (await reader.readline()).strip():
            pass
        # No tunnel: the client retries, which is all this test needs.
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    target = free_port()
    clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
    # Slower retries than QUICK: closing the client while websockets awaits the proxy's
    # answer leaves an unretrieved future behind (noise at exit), so rarely be in one.
    slower = BackoffSettings(initial=0.2, cap=0.3, restart_cap=0.3, going_away=0.3)
    flags = FlagClient(f"http://flags.example:{target}", "k", backoff=slower, start_timeout=0.01)
    try:
        await flags.start()
        await poll(lambda: len(requests) >= 2, 10, "two CONNECTs through the proxy")
        assert requests[0].startswith(f"CONNECT flags.example:{target} ".encode()), requests[0]
    finally:
        await flags.close()
        server.close()
        await server.wait_closed()
