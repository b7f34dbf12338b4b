"""A CPU-timed profile of ``flagwire serve``: cProfile clocked by the process's own CPU time.

Why beside py-spy (``_profile.py``): py-spy samples a *runnable* process, and on a
shared machine a runnable process spends much of its time waiting for a core, so
its samples pile up wherever the kernel preempts it (a third of them in socket
writes at load 12, with 0.05 ms of system CPU per write).  A profiler whose clock
is ``time.process_time`` counts only CPU the server used.  It slows call-heavy
code down, so read the shares, not the absolute times.

``python -m bench._cpuprofile <flagwire serve arguments>`` runs the server with the
profiler off; SIGUSR1 starts it, SIGUSR2 stops it and writes the stats to
``$BENCH_CPUPROFILE_OUT`` (then ``<that>.done``).  :class:`ProfiledServer` starts it.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._harness import ROOT
from bench._processes import FlagwireServer

__all__ = ["ProfiledServer", "summarize_cpu_profile"]

_ENV = "BENCH_CPUPROFILE_OUT"

#: Library of a profiled function, by its file (first match wins).
_LIBRARIES = (
    ("flagwire (ours)", ("flagwire_server/", "flagwire/")),
    ("redis-py", ("redis/",)),
    ("starlette", ("starlette/",)),
    ("uvicorn + httptools", ("uvicorn/", "httptools")),
    ("prometheus_client", ("prometheus_client/",)),
    ("websockets", ("websockets/",)),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py")),
)


class ProfiledServer(FlagwireServer):
    """A :class:`FlagwireServer` under the CPU-clocked profiler (off until :meth:`begin`)."""

    def __init__(self, redis_url: str, out: Path, **kwargs: Any) -> None:
        env = dict(kwargs.pop("env", None) or {})
        env[_ENV] = str(out)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        super().__init__(redis_url, env=env, **kwargs)
        self.out = out

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench._cpuprofile", *super().command()[1:]]

    def begin(self) -> None:
        Path(f"{self.out}.done").unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)

    def end(self, timeout: float = 60.0) -> Path:
        """Stop profiling; the stats file once the server has written it."""
        os.kill(self.pid, signal.SIGUSR2)
        done = Path(f"{self.out}.done")
        deadline = time.monotonic() + timeout
        while not done.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no profile from the server after {timeout}s")
            time.sleep(0.05)
        done.unlink()
        return self.out


def _library(filename: str) -> str:
    for name, marks in _LIBRARIES:
        if any(m in filename for m in marks):
            return name
    return "C calls (sockets, JSON, hashing)" if filename == "~" else "other Python"


def summarize_cpu_profile(path: Path, *, writes: int = 0, top: int = 25) -> str:
    """CPU by library (each function's own time), then our hottest functions (inclusive)."""
    st: Any = pstats.Stats(str(path))
    total = st.total_tt or 1.0
    own: Counter[str] = Counter()
    ours: list[tuple[float, float, str]] = []
    for (filename, line, func), (_cc, _nc, tt, ct, _callers) in st.stats.items():
        own[_library(filename)] += tt
        if _library(filename) == "flagwire (ours)":
            where = filename.split("/server/")[-1].split("/client/")[-1]
            ours.append((ct, tt, f"{func} ({where}:{line})"))
    lines = [
        f"CPU-timed profile: {total:.2f} s of server CPU under cProfile"
        + (f" over {writes} writes" if writes else ""),
        "",
        "own CPU by library:",
        *(f"  {t / total:6.1%}  {name}" for name, t in own.most_common()),
        "",
        "our functions, inclusive (own) CPU:",
        *(
            f"  {ct / total:6.1%} ({tt / total:5.1%})  {name}"
            for ct, tt, name in sorted(ours, reverse=True)[:top]
        ),
    ]
    return "\n".join(lines) + "\n"


def _serve() -> None:
    out = os.environ[_ENV]
    prof = cProfile.Profile(time.process_time)

    def stop(*_: object) -> None:
        prof.disable()
        prof.dump_stats(out)
        Path(f"{out}.done").touch()

    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
    signal.signal(signal.SIGUSR2, stop)
    from flagwire_server.cli.main import main

    sys.argv = ["flagwire", *sys.argv[1:]]
    main()


if __name__ == "__main__":
    _serve()
