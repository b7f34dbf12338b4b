"""OpenFeature's JavaScript OFREP providers for tests and benchmarks: install and serve.

``node_modules()`` installs the packages pinned by ``tests/ofrep_js/package-lock.json``
with ``npm ci`` into a cache directory keyed by the lock file's hash
(``FLAGWIRE_NPM_CACHE``, default ``~/.cache/flagwire/ofrep-js``), once per machine.
``page_server()`` serves ``examples/ofrep-browser/index.html`` with those modules on an
origin of its own, so the page calls flagwire cross-origin (CORS) as a real site would.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_ARGS", "JS", "PAGE", "node_modules", "page_server"]

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "tests" / "ofrep_js"
PAGE = ROOT / "examples" / "ofrep-browser" / "index.html"
#: Debian's Chromium, headless, as root, on a machine without outside network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def node_modules() -> Path | None:
    """The installed ``node_modules`` (installing them first if needed); None without npm.

    Raises:
        subprocess.CalledProcessError: ``npm ci`` failed (no registry, say).
    """
    npm = shutil.which("npm")
    if npm is None:
        return None
    lock = (JS / "package-lock.json").read_bytes()
    base = Path(os.environ.get("FLAGWIRE_NPM_CACHE", Path.home() / ".cache/flagwire/ofrep-js"))
    target = base / hashlib.sha256(lock).hexdigest()[:16]
    done = target / ".installed"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(JS / "package.json", target)
        shutil.copy(JS / "package-lock.json", target)
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=target,
            check=True,
            timeout=240,
            capture_output=True,
        )
        done.touch()
    return target / "node_modules"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server(port: int, modules: Path, root: Path) -> Iterator[str]:
    """The example page and its modules at ``http://127.0.0.1:<port>``, from ``root``."""
    (root / "index.html").write_bytes(PAGE.read_bytes())
    (root / "node_modules").symlink_to(modules)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
