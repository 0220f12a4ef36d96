# Sourced by scripts/run, scripts/test and scripts/bench: makes .venv hold exactly what
# uv.lock says, with the machine's own Python.
#
#   STOKER_GROUPS=dev      (scripts/test, scripts/bench) the daemon plus the dev tools
#   STOKER_GROUPS=runtime  (scripts/run, scripts/install-service) only what the daemon needs
#
# Idempotent and cheap when nothing changed: a stamp in .venv records the hash of uv.lock,
# pyproject.toml, the interpreter and the group set that was installed; when it matches,
# nothing runs (no uv, no network). A runtime set-up accepts a .venv already synced with
# the dev tools (a superset), so alternating scripts/run and scripts/test costs nothing.
#
# uv is the machine's if it has one, else a pinned, hash-checked wheel from PyPI installed
# into .cache/uv/ (ignored by git). Refresh the lock with `uv lock --upgrade`
# (docs/OPERATIONS.md, "Upgrading dependencies").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
GROUPS_WANTED="${STOKER_GROUPS:-dev}"
case "$GROUPS_WANTED" in
dev | runtime) ;;
*)
    echo "stoker: STOKER_GROUPS must be 'dev' or 'runtime', not '$GROUPS_WANTED'" >&2
    exit 2
    ;;
esac

# The uv the project was locked with; any uv >= 0.8 reads the lock the same way.
UV_PIN="uv==0.13.8"
UV_HASHES=(
    "sha256:e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984" # manylinux x86_64
    "sha256:0b3e8b1a4f5e405e31e2ff33de8af4744831e9f7338539671efbd8c3c94e791d" # manylinux aarch64
)

pick_python() {
    # The minor version in .python-version is the one the project is tested on.
    local want
    want="$(tr -d '[:space:]' <"$ROOT/.python-version")"
    for cand in "${STOKER_PYTHON:-}" "python$want" python3; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$want' else 1)" 2>/dev/null; then
            # The interpreter itself, not a shim (pyenv's) that could point elsewhere later.
            "$cand" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    echo "stoker: Python $want is required (.python-version); set STOKER_PYTHON to its path" >&2
    return 1
}

stamp_of() { # the stamp a sync of group set $1 with interpreter $2 would write
    (cat "$ROOT/uv.lock" "$ROOT/pyproject.toml"; echo "python=$2"; echo "groups=$1"
        echo "bytecode=1") |
        sha256sum | cut -d' ' -f1
}

find_uv() {
    if [ -n "${STOKER_UV:-}" ]; then
        echo "$STOKER_UV"
        return 0
    fi
    if command -v uv >/dev/null 2>&1; then
        command -v uv
        return 0
    fi
    local dir="$ROOT/.cache/uv/${UV_PIN#uv==}"
    if [ ! -x "$dir/bin/uv" ]; then
        echo "stoker: uv is not on PATH; installing $UV_PIN from PyPI into $dir" >&2
        local req
        req="$(mktemp)"
        {
            printf '%s' "$UV_PIN"
            printf ' --hash=%s' "${UV_HASHES[@]}"
            echo
        } >"$req"
        rm -rf "$dir"
        "$PY" -m venv "$dir" >&2
        if ! "$dir/bin/python" -m pip install --disable-pip-version-check --no-input \
            --require-hashes --only-binary=:all: -r "$req" >&2; then
            rm -f "$req"
            echo "stoker: could not install $UV_PIN (pip's error is above)" >&2
            return 1
        fi
        rm -f "$req"
    fi
    echo "$dir/bin/uv"
}

PY="$(pick_python)"
STAMP="$VENV/.stoker-synced"
needs_setup() {
    local have=""
    [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ] && have="$(cat "$STAMP")"
    [ "$have" != "$(stamp_of "$GROUPS_WANTED" "$PY")" ] &&
        { [ "$GROUPS_WANTED" != runtime ] || [ "$have" != "$(stamp_of dev "$PY")" ]; }
}
# Two scripts started together on a fresh checkout (scripts/test beside scripts/bench) must
# not both install uv and sync .venv: the second waits for the first (flock), then finds the
# stamp current. The lock is held only while setting up.
if needs_setup && command -v flock >/dev/null 2>&1; then
    mkdir -p "$ROOT/.cache"
    exec 9>"$ROOT/.cache/setup.lock"
    flock 9
fi
if needs_setup; then
    started=$SECONDS
    echo "stoker: setting up $VENV from uv.lock ($GROUPS_WANTED, $("$PY" -V 2>&1))" >&2
    UV="$(find_uv)"
    # --locked: install exactly uv.lock, and refuse a lock that no longer matches
    # pyproject.toml ("run uv lock") instead of installing a stale one.
    # --compile-bytecode: the packages' bytecode is written once, here, so that no process
    # compiles trio, msgspec and the rest at start-up, even where PYTHONDONTWRITEBYTECODE
    # is set (then every daemon start and `stoker` command compiled them: ~0.45 s of CPU).
    flags=(--locked --compile-bytecode --python "$PY")
    if [ "$GROUPS_WANTED" = runtime ]; then
        # --inexact: dev tools already in .venv stay (scripts/test would only put them back).
        flags+=(--no-dev --inexact)
    fi
    # uv shows its own progress and, on failure, the resolver's or installer's error.
    if ! UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never \
        "$UV" sync --project "$ROOT" "${flags[@]}"; then
        rm -f "$STAMP"
        echo "stoker: setting up $VENV failed (uv's error is above)" >&2
        exit 1
    fi
    stamp_of "$GROUPS_WANTED" "$PY" >"$STAMP"
    echo "stoker: $VENV is ready ($((SECONDS - started)) s)" >&2
fi
{ exec 9>&-; } 2>/dev/null || true
export PATH="$VENV/bin:$PATH"
