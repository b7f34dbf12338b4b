"""The public API is exactly what we mean to export (httpx's test_exported_members)."""

from __future__ import annotations

import importlib

import flagwire

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
    "Snapshot",
    "ValidationError",
    "ValueWatch",
    "__version__",
}


def test_all_is_what_we_mean_to_export() -> None:
    assert set(flagwire.__all__) == EXPECTED
    assert sorted(flagwire.__all__) == flagwire.__all__


def test_every_exported_name_exists_and_lives_in_a_private_module() -> None:
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
