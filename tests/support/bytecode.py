"""Compiled bytecode kept between the Python processes of a test run, and between runs.

Why: the suite starts well over a hundred Python processes (``flagwire serve``,
example apps, tools).  With ``PYTHONDONTWRITEBYTECODE`` set, as it is on the
machines this suite runs on, each of them compiled every module it imports
from source, every time: a server start and stop took 2.1 s of CPU, 0.95 s
from bytecode (test_stream + test_serve: 65 s of CPU -> 26 s).  When the
variable is set, :func:`cache_bytecode` keeps the bytecode in one directory
outside the source tree (``PYTHONPYCACHEPREFIX``, inside the venv) for this
process and every process it starts: the source tree stays as clean as the
variable meant it to.  Without the variable Python writes ``__pycache__`` as
usual and nothing changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["cache_bytecode"]


def cache_bytecode() -> Path | None:
    """Write bytecode under ``<venv>/pycache`` if it would otherwise not be written at all.

    Returns the directory used, or None when nothing was changed (bytecode is
    written already, or the venv is not writable).
    """
    if not sys.dont_write_bytecode:
        return None
    prefix = Path(sys.pycache_prefix) if sys.pycache_prefix else Path(sys.prefix) / "pycache"
    try:
        prefix.mkdir(exist_ok=True)
    except OSError:
        return None
    if not os.access(prefix, os.W_OK):
        return None
    sys.pycache_prefix = str(prefix)
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return prefix
