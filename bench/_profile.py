"""py-spy profiles of a server under load: record one, and read the hottest frames out of it.

Why a module of its own: profiling is a tool any benchmark may use (``--profile``
in ``bench/propagation.py``), not part of what one benchmark measures.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

__all__ = ["start_profile", "stop_profile", "summarize_profile"]


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print("(py-spy not installed in the venv: no profile)", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--rate",
            "250",
            "--format",
            "speedscope",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive time of the hottest frames in a py-spy speedscope file."""
    import collections
    import json

    d = json.loads(path.read_text())
    frames = d["shared"]["frames"]
    self_t: collections.Counter[int] = collections.Counter()
    incl: collections.Counter[int] = collections.Counter()
    total = 0.0
    for prof in d["profiles"]:
        for stack, w in zip(prof["samples"], prof["weights"], strict=True):
            total += w
            if stack:
                self_t[stack[-1]] += w
            for f in set(stack):
                incl[f] += w

    def name(i: int) -> str:
        f = frames[i]
        where = str(f.get("file", "")).split("site-packages/")[-1].split("/work/main/")[-1]
        return f"{f['name']} ({where}:{f.get('line', '')})"

    lines = [f"py-spy samples: {total:.1f} s of server time", "", "self time:"]
    lines += [f"  {w / total:6.1%}  {name(i)}" for i, w in self_t.most_common(top)]
    lines += ["", "inclusive time (frames under the event loop):"]
    lines += [
        f"  {w / total:6.1%}  {name(i)}" for i, w in incl.most_common(top + 20) if w / total < 0.9
    ]
    return "\n".join(lines) + "\n"


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    import signal

    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
