"""The webhooks' surface: input checks, the secret shown once, audit, the CLI, the console.

Real app over ASGI (or a real uvicorn for the CLI and the console) and real
Redis.  Delivery itself is ``test_webhooks.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from flagwire_server.notify.signature import SignatureError, verify
from tests.support.builders import flag
from tests.support.inprocess import InProcessServer, asgi_app
from tests.support.polling import poll, poll_blocking
from tests.support.receiver import Received, receiver
from tests.support.server import _cleanup_prefix
from tests.support.webhooks import BASE, FAST, add_hook, contains, falsy
from tests.test_console_sessions import sign_in

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def prefix(redis_url: str, redis_prefix: str) -> Iterator[str]:
    yield redis_prefix
    _cleanup_prefix(redis_url, redis_prefix)


async def test_a_rotated_secret_signs_from_then_on(redis_url: str, prefix: str) -> None:
    async with receiver() as rec, asgi_app(redis_url, prefix, env=FAST) as (_app, http):
        hook_id, old = await add_hook(http, rec.url, ["flag.changed"])
        r = await http.post(f"{BASE}/webhooks/{hook_id}/secret")
        assert r.status_code == 200, r.text
        new = r.json()["secret"]
        assert new.startswith("whsec_")
        assert new != old
        assert r.json()["webhook"]["id"] == hook_id
        assert (await http.post(f"{BASE}/flags", json=flag("rotated"))).is_success
        (got,) = await poll(lambda: rec.requests, within=10, what="the delivery")
        verify(new, got.headers["flagwire-signature"], got.body, now=time.time())
        with pytest.raises(SignatureError):
            verify(old, got.headers["flagwire-signature"], got.body, now=time.time())
        shown = (await http.get(f"{BASE}/webhooks/{hook_id}")).text
        entries = (await http.get("/api/v1/audit")).text
        assert new not in shown + entries
        assert '"rotate_secret"' in entries
        r = await http.post(f"{BASE}/webhooks/wh_000000000000/secret")
        assert r.status_code == 404


async def test_bad_input_is_a_422_naming_the_field(redis_url: str, prefix: str) -> None:
    async with asgi_app(redis_url, prefix) as (_app, http):
        cases = [
            ({"url": "ftp://example.com/x", "events": ["flag.changed"]}, "url"),
            ({"url": "http:///nohost", "events": ["flag.changed"]}, "url"),
            ({"url": "https://user:pw@example.com/", "events": ["flag.changed"]}, "url"),
            ({"url": "not a url", "events": ["flag.changed"]}, "url"),
            ({"url": "https://example.com/", "events": ["flag.renamed"]}, "events/0"),
            ({"url": "https://example.com/", "events": []}, "events"),
            ({"url": "https://example.com/", "events": ["*"], "secret": "mine"}, "secret"),
            ({"events": ["*"]}, "url"),
        ]
        for body, path in cases:
            r = await http.post(f"{BASE}/webhooks", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert path in [e["path"] for e in problem["errors"]], (body, problem)
            assert "invalid webhook" in problem["detail"]
            # Said once: the CLI prints the detail and then each error.
            assert problem["errors"][0]["message"] not in problem["detail"]
        assert (await http.get(f"{BASE}/webhooks")).json() == {"webhooks": []}
        missing = await http.post(
            "/api/v1/environments/nope/webhooks",
            json={"url": "https://example.com/", "events": ["*"]},
        )
        assert missing.status_code == 404
        hook_id, _ = await add_hook(http, "https://example.com/", ["plan.*"])
        r = await http.patch(f"{BASE}/webhooks/{hook_id}", json={"url": "gopher://x"})
        assert r.status_code == 422
        assert r.json()["errors"][0]["path"] == "url"
        r = await http.patch(f"{BASE}/webhooks/{hook_id}", json={"enabled": False})
        assert r.status_code == 200
        assert r.json()["enabled"] is False
        assert (await http.get(f"{BASE}/webhooks/wh_000000000000")).status_code == 404


async def test_private_addresses_can_be_refused(redis_url: str, prefix: str) -> None:
    env = {**FAST, "FLAGWIRE_WEBHOOK_ALLOW_PRIVATE": "0"}
    async with asgi_app(redis_url, prefix, env=env) as (_app, http):
        for url in (
            "http://127.0.0.1:9/",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://localhost/",
        ):
            r = await http.post(f"{BASE}/webhooks", json={"url": url, "events": ["*"]})
            assert r.status_code == 422, (url, r.text)
            assert "FLAGWIRE_WEBHOOK_ALLOW_PRIVATE" in r.json()["errors"][0]["message"]


async def test_creating_and_deleting_a_webhook_is_audited(redis_url: str, prefix: str) -> None:
    async with asgi_app(redis_url, prefix) as (_app, http):
        hook_id, secret = await add_hook(http, "https://example.com/in", ["flag.changed"])
        r = await http.delete(f"{BASE}/webhooks/{hook_id}")
        assert r.status_code == 200
        assert r.json()["webhook"]["id"] == hook_id
        assert (await http.delete(f"{BASE}/webhooks/{hook_id}")).status_code == 404
        entries = (await http.get("/api/v1/audit")).json()["entries"]
        mine = [(e["action"], e["detail"]["url"]) for e in entries if e["key"] == hook_id]
        assert mine == [("delete", "https://example.com/in"), ("create", "https://example.com/in")]
        assert secret not in orjson.dumps(entries).decode()


def test_the_cli_manages_webhooks(redis_url: str, prefix: str) -> None:
    """``flagwire webhooks`` create (secret printed once), list, update, deliveries, delete."""
    from typer.testing import CliRunner

    from flagwire_server.cli.main import app

    server = InProcessServer(redis_url, prefix=prefix).start()
    runner = CliRunner()
    env = {"FLAGWIRE_URL": server.url, "FLAGWIRE_ADMIN_KEY": server.admin_key}

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return str(result.output)

    try:
        out = cli("webhooks", "create", "https://hooks.example.com/in", "--event", "plan.*")
        secret = out.split("store it now): ")[1].strip()
        assert secret.startswith("whsec_")
        listed = orjson.loads(cli("webhooks", "list", "--json"))["webhooks"]
        (hook,) = listed
        assert hook["events"] == ["plan.*"]
        assert secret not in cli("webhooks", "list") + cli("webhooks", "show", hook["id"])
        out = cli("webhooks", "update", hook["id"], "--disable", "--event", "flag.changed")
        assert "(disabled)" in out
        assert "[flag.changed]" in out
        assert "AT" in cli("webhooks", "deliveries", hook["id"])
        rotated = cli("webhooks", "rotate-secret", hook["id"]).split("(shown once): ")[1].strip()
        assert rotated.startswith("whsec_")
        assert rotated != secret
        assert "ftp" in cli("webhooks", "create", "ftp://x/", "--event", "*", code=1)
        assert "deleted" in cli("webhooks", "delete", hook["id"])
        assert orjson.loads(cli("webhooks", "list", "--json")) == {"webhooks": []}
    finally:
        server.stop()


async def test_a_deleted_environment_is_no_longer_read_and_not_recreated(
    redis_url: str, prefix: str
) -> None:
    async with asgi_app(redis_url, prefix, env=FAST) as (app, http):
        assert (await http.post("/api/v1/environments", json={"key": "brief"})).is_success
        r = await http.post(
            "/api/v1/environments/brief/webhooks",
            json={"url": "https://example.com/", "events": ["*"]},
        )
        assert r.status_code == 201, r.text
        hooks = app.state.services.webhooks
        assert "brief" in await hooks.envs()
        assert (await http.delete("/api/v1/environments/brief")).is_success
        await poll(
            lambda: falsy(contains(hooks.envs(), "brief")), within=10, what="brief forgotten"
        )
        keys = await hooks.redis.keys(f"{prefix}:{{brief}}:*")
        assert keys == []  # the reader made no stream or group for it again


def test_through_a_real_uvicorn_server_and_on_the_console(redis_url: str, prefix: str) -> None:
    """The same over a real socket: uvicorn serving the API, the receiver in a thread."""
    import asyncio
    import threading

    got: list[Received] = []
    ready = threading.Event()
    stop = threading.Event()
    port: list[int] = []

    def run_receiver() -> None:
        async def main() -> None:
            async with receiver() as rec:
                port.append(rec.port)
                ready.set()
                while not stop.is_set():
                    got[:] = rec.requests
                    await asyncio.sleep(0.02)

        asyncio.run(main())

    thread = threading.Thread(target=run_receiver, daemon=True)
    thread.start()
    assert ready.wait(10)
    server = InProcessServer(redis_url, prefix=prefix, env=FAST).start()
    try:
        url = f"http://127.0.0.1:{port[0]}/hook"
        made = server.api(
            "POST", "/environments/production/webhooks", {"url": url, "events": ["*"]}
        )
        server.api("POST", "/environments/production/flags", flag("wired"))
        poll_blocking(lambda: got, within=10, what="the delivery")
        verify(made["secret"], got[0].headers["flagwire-signature"], got[0].body, now=time.time())
        assert orjson.loads(got[0].body)["data"]["key"] == "wired"
        # The console's page shows the webhook and its deliveries, never the secret.
        console, _csrf = sign_in(server.url, server.admin_key)
        try:
            page = console.get("/envs/production/webhooks")
            assert page.status_code == 200
            assert url in page.text
            assert made["webhook"]["id"] in page.text
            poll_blocking(
                lambda: "<td>delivered</td>" in console.get("/envs/production/webhooks").text,
                within=10,
                what="the delivery on the console page",
            )
            assert made["secret"] not in page.text
        finally:
            console.close()
    finally:
        server.stop()
        stop.set()
        thread.join(5)
