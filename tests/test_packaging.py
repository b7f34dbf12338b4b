"""The distribution is ready to publish, and first set-up is pinned.

The wheel is built in-process with hatchling (the project's build backend), so
this needs no network; it must carry the files the server reads at run time
(Lua scripts, console templates and static files), which a packaging change
could silently drop from the wheel while every test of a checkout still passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server" / "flagwire_server"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hatchling.build import build_wheel; print(build_wheel(sys.argv[1]))",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    return zipfile.ZipFile(out / proc.stdout.strip().splitlines()[-1])


def _shipped(folder: Path) -> list[str]:
    return [
        p.relative_to(ROOT / "server").as_posix()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]


def test_wheel_carries_scripts_templates_and_static_files(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    expected = [
        *_shipped(SERVER / "store" / "scripts"),
        *_shipped(SERVER / "console" / "templates"),
        *_shipped(SERVER / "console" / "static"),
    ]
    assert any(n.endswith(".lua") for n in expected)
    assert any(n.endswith(".html") for n in expected)
    assert any(n.endswith(".js") for n in expected)
    missing = [n for n in expected if n not in names]
    assert not missing, missing
    assert {"flagwire/py.typed", "flagwire_server/py.typed", "flagwire/core/__init__.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "bench/"))]


def test_wheel_metadata_names_the_command_and_extras(wheel: zipfile.ZipFile) -> None:
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n)
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "flagwire = flagwire_server.cli:main" in entry_points
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "Provides-Extra: server" in metadata
    assert "Requires-Dist: websockets" in metadata


def _names(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match:
            out.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return out


@pytest.mark.parametrize("extra", ["server", "dev"])
def test_lock_pins_every_dependency(extra: str) -> None:
    # scripts/_venv.sh installs with requirements/<extra>.txt as constraints: a dependency
    # added to pyproject.toml without re-running scripts/lock would go unpinned.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["server"])
    if extra == "dev":
        wanted += [
            d for d in project["optional-dependencies"]["dev"] if not d.startswith("flagwire")
        ]
        wanted += list(project["optional-dependencies"]["openfeature"])
    lock = (ROOT / "requirements" / f"{extra}.txt").read_text().splitlines()
    pinned = [line for line in lock if line and not line.startswith("#")]
    assert all("==" in line for line in pinned), [p for p in pinned if "==" not in p]
    missing = _names(wanted) - _names(pinned)
    assert not missing, f"not in requirements/{extra}.txt (run scripts/lock): {sorted(missing)}"
