# Sourced by scripts/serve, scripts/test and scripts/lock: make .venv with Python 3.11+
# and install the project with the given extra, pinned by requirements/<extra>.txt (the
# versions the suite last passed with), whenever pyproject.toml or that file changed.
#
# Installs with uv when it can be had (on PATH, or `pip install uv` into the venv: a
# first set-up in seconds rather than a minute), else with pip. Both read the same pins.
# FLAGWIRE_NO_UV=1 forces pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLAGWIRE_VENV:-$ROOT/.venv}"
EXTRA="$1"
LOCK="$ROOT/requirements/$EXTRA.txt"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "flagwire needs Python 3.11 or newer on PATH (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# Print the path of a working uv, installing it into the venv if needed; fail if none.
flagwire_uv() {
    [ "${FLAGWIRE_NO_UV:-}" != "1" ] || return 1
    local uv
    for uv in "$(command -v uv 2>/dev/null || true)" "$VENV/bin/uv"; do
        if [ -n "$uv" ] && [ -x "$uv" ] && "$uv" --version >/dev/null 2>&1; then
            echo "$uv"; return 0
        fi
    done
    # Whichever pip there is: the venv's, else the interpreter's aimed at the venv.
    if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install --quiet uv >/dev/null 2>&1 || return 1
    else
        "$(find_python)" -m pip --python "$VENV/bin/python" install --quiet uv \
            >/dev/null 2>&1 || return 1
    fi
    [ -x "$VENV/bin/uv" ] && echo "$VENV/bin/uv"
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)"
    echo "creating $VENV with $PY" >&2
    # Without pip: seeding it costs seconds, and uv (or ensurepip, below) adds it.
    "$PY" -m venv --without-pip "$VENV"
fi

STAMP="$VENV/.flagwire-$EXTRA"
WANT="$(cat "$ROOT/pyproject.toml" "$LOCK" | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing flagwire[$EXTRA] into $VENV, pinned by requirements/$EXTRA.txt" >&2
    if UV="$(flagwire_uv)" &&
       "$UV" pip install --quiet --python "$VENV/bin/python" -c "$LOCK" -e "$ROOT[$EXTRA]" >&2; then
        # pip too, for whoever runs .venv/bin/pip by hand.
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1 ||
            "$UV" pip install --quiet --python "$VENV/bin/python" pip >&2
    else
        echo "(uv not available or failed: installing with pip)" >&2
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1 ||
            "$VENV/bin/python" -m ensurepip --default-pip >/dev/null
        "$VENV/bin/python" -m pip install --quiet -c "$LOCK" -e "$ROOT[$EXTRA]" >&2
    fi
    echo "$WANT" > "$STAMP"
fi
