#!/usr/bin/env bash
# Create the peer virtualenvs used by the side-by-side benchmarks (idempotent).
#   .bench/venv-030    cacheme==0.3.0 (pure-Python reference; brings theine<0.4, pydantic<2, msgpack)
#   .bench/venv-peers  theine (latest 2.x); later: aiocache, cashews
# Re-running does nothing when a venv already has its packages importable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/.bench}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$BENCH"

# make_venv DIR CHECK_PY_SNIPPET PIP_ARGS...
make_venv() {
    local dir="$1" check="$2"; shift 2
    # checks run outside the repo: its cacheme/ must not shadow the installed one
    if [ -x "$dir/bin/python" ] && (cd / && "$dir/bin/python" -c "$check") >/dev/null 2>&1; then
        echo "venvs.sh: $dir ok"
        return 0
    fi
    echo "venvs.sh: creating $dir ($*)"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    (cd / && "$dir/bin/python" -c "$check")
}

make_venv "$BENCH/venv-030" \
    'import importlib.metadata as m; assert m.version("cacheme") == "0.3.0"; import cacheme, theine' \
    'cacheme==0.3.0'

make_venv "$BENCH/venv-peers" \
    'import importlib.metadata as m; assert int(m.version("theine").split(".")[0]) >= 2; import theine' \
    'theine>=2'
