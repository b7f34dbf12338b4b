"""A folder of flags as code: ``DIR/flags/<key>.yaml`` and ``DIR/segments/<key>.yaml``.

Why one file per document, named by its key: a pull request then touches
exactly the files of the flags it changes, a merge conflict is confined to one
flag, and ``export`` can write a folder that ``apply`` reads back unchanged.
``.yml`` and ``.json`` files are read too; ``key`` may be left out of a file
(its name gives it) and must match the name when present.

Every problem names its file and line (``flags/a.yaml:7: rules[0].variation:
...``) so that editors and CI annotations can point at it: the model's errors
carry a JSON path, which is looked up in the YAML node tree for its line.  The
messages are the model's own (``validate_flag``/``validate_segment``), the same
the server answers with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import yaml

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE
from flagwire.core.model import validate_flag, validate_segment
from flagwire_server.cli.files import _yaml12_loader

__all__ = [
    "FOLDERS",
    "SERVER_FIELDS",
    "Document",
    "Folder",
    "Problem",
    "dump_document",
    "minimal",
    "read_folder",
]

Kind = Literal["flag", "segment"]
#: The sub-folder of each kind.
FOLDERS: Final[dict[Kind, str]] = {"flag": "flags", "segment": "segments"}
SUFFIXES: Final = (".yaml", ".yml", ".json")
#: Fields the server owns: never written to, nor compared from, a folder.
SERVER_FIELDS: Final = ("version", "created_at", "updated_at", "updated_by")
#: The order fields are written in, most telling first; others follow in model order.
_ORDER: Final = (
    "key",
    "name",
    "description",
    "tags",
    "on",
    "variations",
    "off_variation",
    "included",
    "excluded",
    "targets",
    "prerequisites",
    "rules",
    "fallthrough",
    "salt",
)
#: Always written even when equal to the default: what a reviewer looks for first.
_KEEP: Final = frozenset({"key", "on", "variations", "fallthrough"})
_PATH_TOKEN: Final = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_LOADER: Final = _yaml12_loader(yaml)


class _Dumper(yaml.SafeDumper):
    """YAML 1.2 booleans on the way out too: ``on`` is written as a plain key."""


_Dumper.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in _LOADER.yaml_implicit_resolvers.items()
}


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # YAML folds line breaks in plain and single-quoted scalars, and counts NEL, LS
    # and PS (U+0085, U+2028, U+2029) as line breaks: "a\x85b" came back as "a b".
    # Double quotes escape every one of them, so any string with a character that
    # is not printable is written that way.
    style = None if value.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a folder, at ``file:line`` (line 0: the whole file)."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path + ': ' if self.path else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class Document:
    """A valid document read from a folder: what the file says and its normalised form."""

    kind: Kind
    key: str
    file: str
    body: dict[str, Any]  # as written, with its key
    normal: dict[str, Any]  # validate_flag/validate_segment's copy, defaults filled in


@dataclass(slots=True)
class Folder:
    """Every document of a folder, and every problem found reading it."""

    root: Path
    documents: dict[tuple[Kind, str], Document] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def of(self, kind: Kind) -> list[Document]:
        return [d for (k, _), d in sorted(self.documents.items()) if k == kind]


def validate_doc(kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
    return validate_flag(body) if kind == "flag" else validate_segment(body)


def _files(root: Path, kind: Kind) -> Iterator[Path]:
    sub = root / FOLDERS[kind]
    if sub.is_dir():
        yield from sorted(p for p in sub.iterdir() if p.suffix.lower() in SUFFIXES)


def read_folder(root: Path) -> Folder:
    """Read and validate every document under ``root`` (nothing is sent anywhere)."""
    folder = Folder(root)
    if not root.is_dir():
        folder.problems.append(Problem(str(root), 0, "", "not a directory"))
        return folder
    if not any((root / sub).is_dir() for sub in FOLDERS.values()):
        folder.problems.append(
            Problem(str(root), 0, "", "has neither a flags/ nor a segments/ folder")
        )
    for kind in FOLDERS:
        for path in _files(root, kind):
            doc = _read(path, root, kind, folder.problems)
            if doc is None:
                continue
            if (kind, doc.key) in folder.documents:
                other = folder.documents[(kind, doc.key)].file
                folder.problems.append(Problem(doc.file, 0, "key", f"also in {other}"))
                continue
            folder.documents[(kind, doc.key)] = doc
    return folder


def _read(path: Path, root: Path, kind: Kind, problems: list[Problem]) -> Document | None:
    name = str(path)  # as the user named the folder: relative paths stay relative (CI annotations)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(name, 0, "", f"cannot read: {exc}"))
        return None
    if path.suffix.lower() == ".json":
        parsed = _read_json(text, name, problems)
        if parsed is None:
            return None
        node, data = parsed
        return _document(node, data, path, kind, name, problems)
    try:
        node = yaml.compose(text, Loader=_LOADER)
        data = yaml.load(text, Loader=_LOADER)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        problems.append(Problem(name, mark.line + 1 if mark else 0, "", f"not valid YAML: {what}"))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(name, 0, "", f"not valid YAML: {str(exc).splitlines()[0]}"))
        return None
    return _document(node, data, path, kind, name, problems)


def _read_json(
    text: str, name: str, problems: list[Problem]
) -> tuple[yaml.Node | None, Any] | None:
    """A JSON file parsed as JSON (YAML 1.1 would read ``1e3`` as a string), with the
    YAML node tree only for line numbers (JSON is YAML's flow style)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        problems.append(Problem(name, exc.lineno, "", f"not valid JSON: {exc.msg}"))
        return None
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        node = None  # valid JSON that YAML cannot parse: lines are not known
    return node, data


def _document(
    node: yaml.Node | None,
    data: Any,
    path: Path,
    kind: Kind,
    name: str,
    problems: list[Problem],
) -> Document | None:
    """Check a parsed file's key and fields; validate it with the model."""
    if not isinstance(data, dict):
        problems.append(Problem(name, 1, "", f"a {kind} document must be a mapping"))
        return None
    key = path.stem
    if not KEY_RE.match(key):
        problems.append(Problem(name, 0, "", f"{key!r} is not a valid {kind} key for a file name"))
        return None
    body = dict(data)
    if body.setdefault("key", key) != key:
        problems.append(
            Problem(
                name, line_of(node, "key"), "key", f"{body['key']!r} does not match the file name"
            )
        )
        return None
    for server_field in SERVER_FIELDS:
        if server_field in body:
            problems.append(
                Problem(
                    name,
                    line_of(node, server_field),
                    server_field,
                    "set by the server; leave it out of the folder",
                )
            )
    try:
        normal = validate_doc(kind, body)
    except ValidationError as exc:
        problems += [Problem(name, line_of(node, p), p, m) for p, m in exc.errors]
        return None
    return Document(kind, key, name, body, normal)


def line_of(node: yaml.Node | None, path: str) -> int:
    """The 1-based line of a JSON path (``rules[0].clauses[1]``) in a YAML node tree.

    A path that does not exist (a required field left out) gives the line of
    the deepest part that does, so the message still points near its cause.
    """
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for name, index in _PATH_TOKEN.findall(path):
        child: yaml.Node | None = None
        if index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            child = node.value[int(index)]
        elif name and isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == name), None)
            if child is not None:
                line = next(k for k, v in node.value if v is child).start_mark.line + 1
        if child is None:
            return line
        node = child
        line = node.start_mark.line + 1
    return line


def minimal(kind: Kind, normal: dict[str, Any]) -> dict[str, Any]:
    """``normal`` without its server fields and without top-level fields at their default.

    Derived from the model rather than listed: a field is left out when the
    document validates to the same normalised form without it, so ``apply``
    of the written file gives back exactly ``normal``.
    """
    body = {k: v for k, v in normal.items() if k not in SERVER_FIELDS}
    target = validate_doc(kind, body)
    for name in list(body):
        if name in _KEEP:
            continue
        trial = {k: v for k, v in body.items() if k != name}
        try:
            same = validate_doc(kind, trial) == target
        except ValidationError:
            same = False
        if same:
            body = trial
    rank = {name: i for i, name in enumerate(_ORDER)}
    return dict(sorted(body.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def dump_document(body: dict[str, Any]) -> str:
    """A document as YAML (1.2 booleans, keys in the order given, block style)."""
    return yaml.dump(
        body,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
