#!/usr/bin/env bash
# Peer venvs of the Redis benchmark (idempotent), one per contender:
#   .bench/venv-redis-030       cacheme==0.3.0 + redis<5 (0.3.0 imports redis.asyncio)
#   .bench/venv-redis-aiocache  aiocache + redis
#   .bench/venv-redis-cashews   cashews + redis
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/.bench}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$BENCH"

make_venv() {
    local dir="$1" check="$2"; shift 2
    # checks run outside the tree: its cacheme (ours) would shadow the venv's
    if [ -x "$dir/bin/python" ] && (cd / && "$dir/bin/python" -c "$check") >/dev/null 2>&1; then
        echo "redis_venvs.sh: $dir ok"
        return 0
    fi
    echo "redis_venvs.sh: creating $dir ($*)"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    (cd / && "$dir/bin/python" -c "$check")
}

make_venv "$BENCH/venv-redis-030" \
    'import importlib.metadata as m; assert m.version("cacheme") == "0.3.0"; import cacheme, redis.asyncio' \
    'cacheme==0.3.0' 'redis<5'
make_venv "$BENCH/venv-redis-aiocache" 'import aiocache, redis.asyncio' 'aiocache' 'redis'
make_venv "$BENCH/venv-redis-cashews" 'import cashews, redis.asyncio' 'cashews' 'redis'
