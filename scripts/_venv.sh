# Sourced by scripts/run, scripts/test and scripts/bench: makes .venv exist and be current.
# Idempotent: the project is (re)installed only when pyproject.toml changed since the last
# install, so a second run costs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

pick_python() {
    for cand in "${STOKER_PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    echo "stoker: Python >= 3.11 is required (set STOKER_PYTHON to its path)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(pick_python)"
    echo "stoker: creating $VENV with $PY" >&2
    "$PY" -m venv "$VENV"
fi

EXTRAS="${STOKER_EXTRAS:-dev}"
STAMP="$VENV/.stoker-installed"
WANT="$( (cat "$ROOT/pyproject.toml"; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "stoker: installing the project into $VENV" >&2
    LOG="$VENV/install.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT[$EXTRAS]" >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "stoker: installing into $VENV failed; the whole log is $LOG" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
