#!/usr/bin/env bash
# The venv of cacheme 0.3.0 with its SQL drivers (idempotent), used by the SQL
# benchmark and by tests/test_sql.py's 0.3.0-compatibility tests:
#   .bench/venv-sql-030   cacheme==0.3.0 + asyncpg + aiomysql
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/.bench}"
PYTHON="${PYTHON:-python3}"
DIR="$BENCH/venv-sql-030"
CHECK='import importlib.metadata as m; assert m.version("cacheme") == "0.3.0"; import cacheme, asyncpg, aiomysql; assert m.version("PyMySQL") < "1.1"'
mkdir -p "$BENCH"
# checks run outside the tree: its cacheme (ours) would shadow the venv's
if [ -x "$DIR/bin/python" ] && (cd / && "$DIR/bin/python" -c "$CHECK") >/dev/null 2>&1; then
    echo "sql_venvs.sh: $DIR ok"
    exit 0
fi
echo "sql_venvs.sh: creating $DIR"
[ -x "$DIR/bin/python" ] || "$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check 'cacheme==0.3.0' asyncpg aiomysql 'PyMySQL<1.1'
(cd / && "$DIR/bin/python" -c "$CHECK")
