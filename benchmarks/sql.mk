# SQL storage benchmarks. Included by the root Makefile (which provides PY and
# the target `venv`); needs PostgreSQL and MariaDB server binaries (Debian:
# postgresql, mariadb-server): temporary servers are started on free ports.
# See benchmarks/SQL.md.
#
#   make bench-sql             0.3.0's sequential benchmarks (read, write, zipf, batch of 20)
#                              per storage and payload, plus 1k concurrent readers:
#                              ours vs cacheme 0.3.0 (asyncpg, aiomysql) in one run
#   make bench-sql-venvs       (re)create .bench/venv-sql-030 (idempotent)
#   make bench-sql-read-cost   wall time and MariaDB's CPU per sequential read
#   make bench-new-loop        calls/s of asyncio.run(get) per call vs one loop: local,
#                              Redis, PostgreSQL, MariaDB side by side (what a new loop costs)
#
# Knobs: make bench-sql BENCH_SQL_ARGS="--storages postgresql --payloads 100 \
#            --pg postgresql://postgres@127.0.0.1:5432/test"

SQL_BENCH_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_PYTHON ?= python3
BENCH_SQL_ARGS ?=

.PHONY: bench-sql bench-sql-venvs

bench-sql-venvs:
	PYTHON=$(BENCH_PYTHON) bash $(SQL_BENCH_SRC)/sql_venvs.sh

bench-sql: venv bench-sql-venvs
	$(PY) $(SQL_BENCH_SRC)/bench_sql.py $(BENCH_SQL_ARGS)

# Wall time and MariaDB's CPU per sequential cacheme.get (a local server:
# make bench-sql-read-cost SQL_READ_COST_ARGS="--url mysql://root@127.0.0.1:3306/test")
SQL_READ_COST_ARGS ?=
.PHONY: bench-sql-read-cost
bench-sql-read-cost: venv
	$(PY) $(SQL_BENCH_SRC)/sql_read_cost.py $(SQL_READ_COST_ARGS)

# What a new event loop costs per storage (asyncio.run per request):
# make bench-new-loop BENCH_NEW_LOOP_ARGS="--rounds 5 --calls 300 --no-redis"
BENCH_NEW_LOOP_ARGS ?=
.PHONY: bench-new-loop
bench-new-loop: venv
	$(PY) $(SQL_BENCH_SRC)/bench_new_loop.py $(BENCH_NEW_LOOP_ARGS)

# One request/reply round trip through asyncio vs a blocking socket (Redis
# PING on 127.0.0.1:6379): the loop wakeup every sequential asyncio read pays.
.PHONY: bench-asyncio-rtt
bench-asyncio-rtt:
	$(BENCH_PYTHON) $(SQL_BENCH_SRC)/asyncio_rtt.py
