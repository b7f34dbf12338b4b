"""deploy/nginx/nginx.conf for real: nginx in front of two `flagwire serve` processes.

The config is deploy's own, with only what a test must change rewritten: the
upstream servers become two real servers on free ports, the listen address a
free loopback port, logs and temporary files go to a temporary directory.
The servers run the image's command (ENTRYPOINT + CMD of deploy/Dockerfile)
configured, like the image, by environment variables only.  A stream opened
through nginx is upgraded, gets hello and snapshot, and receives a change made
through nginx's admin API.

Needs an nginx binary (`apt-get install -y nginx`); skipped without one unless
``CI`` is set, where a missing balancer is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
import yaml

from flagwire.core.limits import STREAM_PATH
from tests.support.invariants import wait_key_known
from tests.support.redisproc import free_port
from tests.support.server import ServerProcess, _cleanup_prefix
from tests.test_deploy import DEPLOY, image_command

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)

pytestmark = pytest.mark.skipif(
    NGINX is None and not os.environ.get("CI"),
    reason="no nginx binary (apt-get install -y nginx); required when CI is set",
)


class ImageServer(ServerProcess):
    """`flagwire serve` exactly as the image runs it: the Dockerfile's argv, env-only config."""

    def command(self) -> list[str]:
        argv = image_command()
        exe = Path(sys.executable).with_name(argv[0])
        assert exe.exists(), f"{argv[0]} console script not installed beside {sys.executable}"
        # the image binds 0.0.0.0 inside its container; a test binds loopback only
        args = ["127.0.0.1" if a == "0.0.0.0" else a for a in argv[1:]]
        return [str(exe), *args]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["FLAGWIRE_PORT"] = str(self.port)
        env["FLAGWIRE_DATA_DIR"] = str(self.data_dir)
        if self.redis_url:
            env["FLAGWIRE_REDIS_URL"] = self.redis_url
        return env


def test_image_server_command_uses_only_the_dockerfile_arguments() -> None:
    cmd = ImageServer(None).command()
    assert cmd[1:] == ["serve", "--host", "127.0.0.1"]


def render_config(upstreams: list[int], port: int, tmp: Path) -> str:
    """deploy's nginx.conf with upstreams, listen port, logs and temp paths rewritten."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in upstreams)
    conf, n = re.subn(r"(?m)^\s*server flagwire-\d+:8080[^;]*;\n", "", conf)
    assert n == 3, "expected three upstream servers in deploy/nginx/nginx.conf"
    conf = conf.replace("        least_conn;\n", f"        least_conn;\n{servers}\n", 1)
    conf, n = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", conf)
    assert n == 1
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    conf = conf.replace("access_log /dev/stdout;", f"access_log {tmp}/access.log;")
    conf = conf.replace("error_log /dev/stderr warn;", f"error_log {tmp}/error.log warn;")
    temp = "\n".join(
        f"    {name}_temp_path {tmp}/{name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return conf.replace("http {\n", f"http {{\n{temp}\n", 1)


@contextlib.contextmanager
def nginx(upstreams: list[int]) -> Iterator[str]:
    assert NGINX is not None, "CI is set but no nginx binary: apt-get install -y nginx"
    tmp = Path(tempfile.mkdtemp(prefix="fw-nginx-"))
    tmp.chmod(0o755)
    port = free_port()
    (tmp / "nginx.conf").write_text(render_config(upstreams, port, tmp))
    argv = [
        NGINX,
        "-p",
        str(tmp),
        "-c",
        str(tmp / "nginx.conf"),
        "-g",
        f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;",
    ]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert proc.poll() is None, (tmp / "error.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def two_servers(redis_url: str, redis_prefix: str, admin_key: str) -> Iterator[list[ImageServer]]:
    servers = [ImageServer(redis_url, prefix=redis_prefix, admin_key=admin_key) for _ in range(2)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.kill()
        _cleanup_prefix(redis_url, redis_prefix)


async def _recv(ws: Any, kind: str, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if msg["type"] == kind:
            return dict(msg)


@pytest.mark.timeout(120)
async def test_stream_through_nginx_is_upgraded_and_receives_changes(
    two_servers: list[ImageServer], admin_key: str
) -> None:
    with nginx([s.port for s in two_servers]) as addr:
        async with httpx.AsyncClient(
            base_url=f"http://{addr}/api/v1",
            timeout=10,
            headers={"Authorization": f"Bearer {admin_key}"},
        ) as http:
            r = await http.post("/environments", json={"key": "lbtest", "name": "LB test"})
            assert r.status_code in (200, 201), r.text
            r = await http.post("/keys", json={"name": "lb", "kind": "sdk", "env": "lbtest"})
            assert r.status_code == 201, r.text
            sdk = r.json()["secret"]
            r = await http.put(
                "/environments/lbtest/flags/lb-flag",
                json={
                    "key": "lb-flag",
                    "on": False,
                    "variations": [True, False],
                    "off_variation": 1,
                    "fallthrough": {"variation": 0},
                },
            )
            assert r.status_code in (200, 201), r.text
            await wait_key_known([s.ws_url for s in two_servers], sdk)  # key ring polls

            streams = []
            try:
                for _ in range(4):
                    ws = await websockets.connect(
                        f"ws://{addr}{STREAM_PATH}",
                        compression=None,
                        open_timeout=10,
                        additional_headers={"Authorization": f"Bearer {sdk}"},
                    )
                    streams.append(ws)
                    hello = await _recv(ws, "hello")
                    assert hello["env"] == "lbtest"
                    snap = await _recv(ws, "snapshot")
                    assert snap["flags"]["lb-flag"]["on"] is False
                # least_conn spreads the four streams over both instances
                async with httpx.AsyncClient(timeout=5) as plain:
                    pages = [(await plain.get(f"{s.url}/metrics")).text for s in two_servers]
                connected = [_connected(page) for page in pages]
                assert connected == [2, 2], connected

                r = await http.patch("/environments/lbtest/flags/lb-flag", json={"on": True})
                assert r.status_code == 200, r.text
                version = r.json()["env_version"]
                for ws in streams:
                    patch = await _recv(ws, "patch")
                    assert patch["key"] == "lb-flag"
                    assert patch["data"]["on"] is True
                    assert patch["version"] == version
            finally:
                for ws in streams:
                    await ws.close()


def _connected(metrics: str) -> int:
    """``flagwire_connected_clients`` summed over environments (Prometheus text)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("flagwire_connected_clients"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# --- forwarded headers (issue 10, item 7) --------------------------------------------

#: Loopback addresses of our own for the two parties (Linux routes all of 127/8 to lo).
ATTACKER, VICTIM = "127.0.0.2", "127.0.0.3"
FAIL_LIMIT = 4


def compose_trusted_proxies() -> str:
    """docker-compose.yml's FORWARDED_ALLOW_IPS, nginx's address there mapped to its
    address here (nginx reaches its upstreams from 127.0.0.1 in this test)."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    trusted = str(compose["x-flagwire-env"]["FORWARDED_ALLOW_IPS"])
    nets = compose["services"]["nginx"].get("networks") or {}
    nginx_ip = (nets.get("default") or {}).get("ipv4_address") if isinstance(nets, dict) else None
    return trusted.replace(nginx_ip, "127.0.0.1") if nginx_ip else trusted


@pytest.fixture
def guarded_server(redis_url: str, redis_prefix: str, admin_key: str) -> Iterator[ImageServer]:
    """One server configured as compose configures the instances behind nginx."""
    env = {
        "FORWARDED_ALLOW_IPS": compose_trusted_proxies(),
        "FLAGWIRE_AUTH_FAIL_LIMIT": str(FAIL_LIMIT),
    }
    server = ImageServer(redis_url, prefix=redis_prefix, admin_key=admin_key, env=env)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        _cleanup_prefix(redis_url, redis_prefix)


async def _stream_status(addr: str, key: str, source: str, forwarded: str | None) -> int:
    """The HTTP status of a stream handshake from ``source`` (101 when it was accepted)."""
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    try:
        async with websockets.connect(
            f"ws://{addr}{STREAM_PATH}",
            additional_headers=headers,
            compression=None,
            open_timeout=10,
            local_addr=(source, 0),
        ) as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.timeout(120)
async def test_forged_forwarded_for_neither_bypasses_nor_locks_out(
    guarded_server: ImageServer, admin_key: str
) -> None:
    sdk = guarded_server.api(
        "POST", "/keys", {"name": "victim", "kind": "sdk", "env": "production"}
    )
    secret = sdk["secret"]
    with nginx([guarded_server.port]) as addr:
        attacker = httpx.AsyncClient(
            base_url=f"http://{addr}/api/v1",
            timeout=10,
            transport=httpx.AsyncHTTPTransport(local_address=ATTACKER),
        )
        victim = httpx.AsyncClient(
            base_url=f"http://{addr}/api/v1",
            timeout=10,
            transport=httpx.AsyncHTTPTransport(local_address=VICTIM),
        )
        async with attacker, victim:
            await wait_key_known([guarded_server.ws_url], secret)  # key ring polls
            assert await _stream_status(addr, secret, VICTIM, None) == 101

            # Lock-out attempt: bad keys in the victim's name, over the stream and the API.
            bad = "fw_sdk_" + "0" * 32
            stream = [
                await _stream_status(addr, bad, ATTACKER, VICTIM) for _ in range(FAIL_LIMIT + 2)
            ]
            api = [
                (
                    await attacker.get(
                        "/environments",
                        headers={"Authorization": f"Bearer {bad}", "X-Forwarded-For": VICTIM},
                    )
                ).status_code
                for _ in range(FAIL_LIMIT + 2)
            ]
            # ... are charged to the attacker's own address, which is throttled,
            assert stream == [401] * FAIL_LIMIT + [429, 429], stream
            assert api == [401] * FAIL_LIMIT + [429, 429], api
            # ... while the victim's address is untouched: its valid keys still work.
            assert await _stream_status(addr, secret, VICTIM, None) == 101
            r = await victim.get("/environments", headers={"Authorization": f"Bearer {admin_key}"})
            assert r.status_code == 200, r.text

            # Bypass attempt: a fresh forged address on every try changes nothing.
            forged = [f"198.51.100.{i}" for i in range(1, 5)]
            assert [await _stream_status(addr, bad, ATTACKER, f) for f in forged] == [429] * 4
            statuses = [
                (
                    await attacker.get(
                        "/environments",
                        headers={"Authorization": f"Bearer {bad}", "X-Forwarded-For": f},
                    )
                ).status_code
                for f in forged
            ]
            assert statuses == [429] * 4, statuses
            # An entry put in front of the attacker's own is no way out either.
            spoofed = f"{forged[0]}, {VICTIM}"
            assert await _stream_status(addr, bad, ATTACKER, spoofed) == 429
