"""Reading flag and segment documents from JSON or YAML files (``flags create``, ``import``).

Why YAML 1.2 booleans: YAML 1.1 reads ``on``, ``off``, ``yes`` and ``no`` as
booleans, so a flag's ``on: true`` would load as ``{True: True}``.  A syntax
error names its file, line and column (``f.yaml:3:7: ...``), as compilers do,
so that an editor can jump to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from flagwire_server.cli.http import fail

__all__ = ["load_file"]


def _yaml12_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false."""
    bool_tag = "tag:yaml.org,2002:bool"

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    Loader.yaml_implicit_resolvers = {
        first: [r for r in resolvers if r[0] != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def load_file(path: Path) -> Any:
    """The document in ``path``: YAML for ``.yaml``/``.yml``, JSON otherwise.

    Raises:
        CliError: unreadable, or not valid YAML/JSON (with line and column).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.load(text, Loader=_yaml12_loader(yaml))  # a SafeLoader
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            what = " ".join(p for p in (exc.context, exc.problem) if p)
            fail(f"{where}: not valid YAML: {what}")
        except yaml.YAMLError as exc:
            fail(f"{path}: not valid YAML: {str(exc).splitlines()[0]}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        fail(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}")
