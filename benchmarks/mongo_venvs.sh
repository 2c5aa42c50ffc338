#!/usr/bin/env bash
# The MongoDB venvs (idempotent), used by tests/mongo_servers.py,
# tests/test_mongo_compat.py and make bench-mongo:
#   .bench/venv-mongoeco    mongoeco[wire] + pymongo on CPython >= 3.13 (mongoeco
#                           needs it): the MongoDB-wire test server
#   .bench/venv-mongo-030   cacheme==0.3.0 + motor (and the pymongo of its day)
#                           on python3
# Without a CPython >= 3.13 the first is skipped with a message (the Mongo tests
# then skip saying so); the script still succeeds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/.bench}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$BENCH"

# pyenv's newest 3.13+ (as make test-versions finds its versions), else
# python3.13/python3.14 on PATH; MONGOECO_PYTHON overrides.
find_py313() {
    if [ -n "${MONGOECO_PYTHON:-}" ]; then echo "$MONGOECO_PYTHON"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        local full
        full=$(pyenv versions --bare 2>/dev/null | grep -xE '3\.(1[3-9])\.[0-9]+' | sort -V | tail -1 || true)
        if [ -n "$full" ]; then
            local p
            p="$(pyenv prefix "$full")/bin/python${full%.*}"
            if [ -x "$p" ]; then echo "$p"; return; fi
        fi
    fi
    for v in 3.14 3.13; do
        if command -v "python$v" >/dev/null 2>&1; then command -v "python$v"; return; fi
    done
}

# checks run outside the tree: its cacheme (ours) would shadow the venvs'
DIR="$BENCH/venv-mongoeco"
CHECK='import sys; assert sys.version_info >= (3, 13); import mongoeco.wire, pymongo, bson; mongoeco.wire.AsyncMongoEcoProxyServer'
if [ -x "$DIR/bin/python" ] && (cd / && "$DIR/bin/python" -c "$CHECK") >/dev/null 2>&1; then
    echo "mongo_venvs.sh: $DIR ok"
else
    PY313="$(find_py313)"
    if [ -z "$PY313" ]; then
        echo "mongo_venvs.sh: no CPython >= 3.13 found (pyenv or python3.13 on PATH): $DIR not made, the MongoDB tests will skip"
    else
        echo "mongo_venvs.sh: creating $DIR with $PY313"
        [ -x "$DIR/bin/python" ] || "$PY313" -m venv "$DIR"
        "$DIR/bin/python" -m pip install --quiet --disable-pip-version-check 'mongoeco[wire]' pymongo
        (cd / && "$DIR/bin/python" -c "$CHECK")
    fi
fi

# cacheme 0.3.0 asks for motor>=3.1.1,<4; motor 3.1 and pymongo 4.3 are of its day.
DIR="$BENCH/venv-mongo-030"
CHECK='import importlib.metadata as m; assert m.version("cacheme") == "0.3.0"; import cacheme.storages.mongo, motor, pymongo; assert m.version("motor") == "3.1.2" and m.version("pymongo") == "4.3.3"'
if [ -x "$DIR/bin/python" ] && (cd / && "$DIR/bin/python" -c "$CHECK") >/dev/null 2>&1; then
    echo "mongo_venvs.sh: $DIR ok"
    exit 0
fi
echo "mongo_venvs.sh: creating $DIR"
[ -x "$DIR/bin/python" ] || "$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check 'cacheme==0.3.0' 'motor==3.1.2' 'pymongo==4.3.3'
(cd / && "$DIR/bin/python" -c "$CHECK")
