"""The public API is exactly what we mean to export (httpx's test_exported_members)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import flagwire
import flagwire.core

EXPECTED = {
    "AuthenticationError",
    "BackoffSettings",
    "ChangeStream",
    "ClientClosedError",
    "ClientError",
    "ClientStatus",
    "ErrorKind",
    "EvaluationDetail",
    "FlagChange",
    "FlagClient",
    "FlagwireError",
    "InitializationError",
    "ProtocolError",
    "Reason",
    "RefusedError",
    "Snapshot",
    "ValidationError",
    "ValueWatch",
    "__version__",
}


def test_all_is_what_we_mean_to_export() -> None:
    assert set(flagwire.__all__) == EXPECTED
    assert sorted(flagwire.__all__) == flagwire.__all__


def test_every_exported_name_lives_in_a_private_module_or_the_public_core() -> None:
    for name in flagwire.__all__:
        obj = getattr(flagwire, name)
        if name != "__version__":
            assert obj.__module__.startswith(("flagwire._", "flagwire.core.")), (
                name,
                obj.__module__,
            )


def test_public_names_not_in_all_are_modules_only() -> None:
    public = {n for n in dir(flagwire) if not n.startswith("_")}
    # submodules imported by the package (private ones start with "_")
    assert public - set(flagwire.__all__) <= {"core", "testing", "sync", "openfeature"}


def test_error_tree() -> None:
    assert issubclass(flagwire.ClientError, flagwire.FlagwireError)
    for cls in (
        flagwire.AuthenticationError,
        flagwire.InitializationError,
        flagwire.ClientClosedError,
    ):
        assert issubclass(cls, flagwire.ClientError)
    for cls in (flagwire.ProtocolError, flagwire.ValidationError):
        assert issubclass(cls, flagwire.FlagwireError)


def test_public_modules() -> None:
    assert importlib.import_module("flagwire.testing").__all__ == ["TestFlags", "make_client"]
    assert importlib.import_module("flagwire.sync").__all__ == ["SyncFlagClient"]
    assert importlib.import_module("flagwire.openfeature").__all__ == ["FlagwireProvider"]


def test_version() -> None:
    assert isinstance(flagwire.__version__, str)
    assert flagwire.__version__.count(".") >= 2


CORE_MODULES = {
    "bucketing",
    "changes",
    "detail",
    "errors",
    "evaluation",
    "limits",
    "model",
    "operators",
    "protocol",
    "reports",
    "schema",
    "sketch",
    "subscription",
}


def test_core_all_lists_every_public_core_module() -> None:
    assert set(flagwire.core.__all__) == CORE_MODULES
    assert sorted(flagwire.core.__all__) == flagwire.core.__all__
    on_disk = {m.name for m in pkgutil.iter_modules(flagwire.core.__path__)}
    assert {n for n in on_disk if not n.startswith("_")} == CORE_MODULES
    for name in flagwire.core.__all__:
        module = getattr(flagwire.core, name)
        assert module.__name__ == f"flagwire.core.{name}"
        assert module.__doc__, f"flagwire.core.{name} has no docstring"
        for member in module.__all__:
            assert hasattr(module, member), (name, member)
        defined = {
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module.__name__
        }
        assert defined <= set(module.__all__), (name, defined - set(module.__all__))


def test_core_constants_have_one_home() -> None:
    limits = flagwire.core.limits
    assert limits.STREAM_PATH == "/api/v1/stream"
    assert limits.WEIGHT_TOTAL == limits.BUCKETS == 100_000
    for name in ("bucketing", "model", "protocol", "evaluation"):
        module = getattr(flagwire.core, name)
        assert not set(module.__all__) & set(limits.__all__), name


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_server_imports_only_the_public_core_and_public_api() -> None:
    server = Path(__file__).resolve().parents[1] / "server" / "flagwire_server"
    bad = {
        f"{path.relative_to(server)}: {name}"
        for path in server.rglob("*.py")
        for name in _imports(path)
        if name.startswith("flagwire.")
        and any(part.startswith("_") for part in name.split(".")[1:])
    }
    assert not bad, sorted(bad)
