"""The examples: the checkout app driven by flagwire.testing (how an app's own tests
would do it), and both examples run as their READMEs say, against a real server."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from examples.checkout.app import NEW, OLD, create_app

from flagwire.testing import TestFlags
from tests.support.builders import flag
from tests.support.redisproc import free_port
from tests.support.server import ServerProcess


async def test_checkout_page_follows_the_flag() -> None:
    flags = TestFlags().set("new-checkout", False)
    flags.set_targets("new-checkout", True, "beta-tester")
    app = create_app(flags.client())  # READY at once: no lifespan needed
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        assert OLD in (await http.get("/", params={"user": "alice"})).text
        assert NEW in (await http.get("/", params={"user": "beta-tester"})).text
        flags.set("new-checkout", True)
        page = (await http.get("/", params={"user": "alice"})).text
        assert NEW in page
        assert "READY" in page


# --- the examples as a new user runs them, against a real server -------------------------

ROOT = Path(__file__).resolve().parents[1]


class Lines:
    """A process's stdout, line by line, with a deadline on each wait."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}; output so far: {self.seen}")


def _bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def _curl_commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.startswith("curl")]


def _untracked() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


def _run_curl(command: str, server: ServerProcess) -> Any:
    command = command.replace("http://127.0.0.1:8080", server.url)
    proc = subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, "ADMIN": server.admin_key},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert not (isinstance(body.get("status"), int) and body["status"] >= 400), (command, body)
    return body


def test_checkout_readme_commands_work_and_leave_the_checkout_clean(
    server: ServerProcess, tmp_path: Path
) -> None:
    untracked_before = _untracked()
    readme = (ROOT / "examples" / "README.md").read_text()
    setup, kill_switch = _bash_blocks(readme)[:2]
    created = [_run_curl(c, server) for c in _curl_commands(setup)]
    assert [c.get("flag", {}).get("key") for c in created][:1] == ["new-checkout"]
    sdk_key = created[-1]["secret"]
    assert sdk_key.startswith("fw_sdk_")
    assert "uvicorn examples.checkout.app:app" in setup

    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.checkout.app:app", "--port", str(port)],
        cwd=ROOT,
        env={
            **os.environ,
            "FLAGWIRE_URL": server.url,
            "FLAGWIRE_SDK_KEY": sdk_key,
            "TMPDIR": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        Lines(app).wait_for("Application startup complete")
        page = httpx.get(f"http://127.0.0.1:{port}/", params={"user": "alice"}, timeout=10).text
        assert NEW in page
        assert "READY" in page
        (flip,) = _curl_commands(kill_switch)
        answer = _run_curl(flip, server)
        assert answer["flag"]["on"] is False
        assert answer["propagation"]["acknowledged"] >= 1  # the app's client confirmed it
        page = httpx.get(f"http://127.0.0.1:{port}/", params={"user": "alice"}, timeout=10).text
        assert OLD in page
        deadline = time.monotonic() + 10
        saved = tmp_path / "flagwire-checkout" / "flags.json"
        while not saved.exists():  # the snapshot is saved in the temp dir (debounced)
            assert time.monotonic() < deadline, "the app saved no snapshot"
            time.sleep(0.1)
    finally:
        app.terminate()
        app.wait(10)
    assert _untracked() == untracked_before


def test_quickstart_script_runs_against_a_server(server: ServerProcess, tmp_path: Path) -> None:
    server.api("PUT", "/environments/production/flags/new-checkout", flag("new-checkout"))
    server.api(
        "PUT",
        "/environments/production/flags/checkout-theme",
        flag("checkout-theme", variations=["classic", "dark"], fallthrough={"variation": 1}),
    )
    key = server.api("POST", "/keys", {"name": "quickstart", "kind": "sdk", "env": "production"})[
        "secret"
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env={
            **os.environ,
            "FLAGWIRE_URL": server.url,
            "FLAGWIRE_SDK_KEY": key,
            "TMPDIR": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = Lines(proc)
        assert out.wait_for("client status") == "client status: READY"
        assert out.wait_for("new-checkout is") == "new-checkout is on for user-42"
        assert out.wait_for("checkout-theme") == "checkout-theme: dark because FALLTHROUGH"
        out.wait_for("watching new-checkout")
        server.api("PATCH", "/environments/production/flags/new-checkout", {"on": False})
        assert out.wait_for("new-checkout version") == "new-checkout version 2: off"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()
    assert (tmp_path / "flagwire-quickstart.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flagwire-quickstart.json"]


def test_readme_python_example_is_the_quickstart_script() -> None:
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    script = (ROOT / "examples" / "quickstart.py").read_text()
    assert block.strip() in script
    assert block.lstrip().startswith("import asyncio")  # complete: imports and all
    assert block.rstrip().endswith("asyncio.run(main())")  # ...down to running it
