# Redis benchmarks. Included by the root Makefile (which provides PY and the
# target `venv`); needs redis-server and redis-benchmark (Debian: redis-server,
# redis-tools). See benchmarks/REDIS.md.
#
#   make bench-redis             0.3.0's "200k concurrent requests" and "20k batch requests":
#                                ours vs cacheme 0.3.0, aiocache, cashews (each in its own venv)
#   make bench-redis-throughput  single-connection GET/s: ours vs redis-benchmark (the C ceiling)
#   make bench-redis-venvs       (re)create the peer venvs under .bench/ (idempotent)
#   make bench-asyncio-suspend   what asyncio itself costs per Task suspension and wakeup
#   make bench-fleet             the 200k trace over 4 processes on one Redis: loads, time,
#                                Redis commands; ours (+ lease) vs 0.3.0 vs cashews lock=True
#   make bench-expiry            hot keys expiring under 1k workers: get latency, loads, callers
#                                that waited; our freshness options vs cashews early/soft
#   make bench-uvloop            sequential GET latency (Redis; PostgreSQL when one answers on
#                                127.0.0.1:5432): asyncio's loop vs uvloop, busy polling on/off
#
# Knobs: make bench-redis BENCH_REDIS_ARGS="--workers 1000 --contenders ours,030"
#        make bench-uvloop BENCH_UVLOOP_ARGS="--pg none --rounds 11"
#        BENCH_DIR=DIR make bench-fleet (or bench-expiry): the peer venvs in DIR, not .bench/

REDIS_BENCH_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_PYTHON ?= python3
BENCH_REDIS_ARGS ?=
BENCH_UVLOOP_ARGS ?=

.PHONY: bench-redis bench-redis-throughput bench-redis-venvs bench-asyncio-suspend bench-uvloop

bench-redis-venvs:
	PYTHON=$(BENCH_PYTHON) bash $(REDIS_BENCH_SRC)/redis_venvs.sh

bench-redis: venv bench-redis-venvs
	$(BENCH_PYTHON) $(REDIS_BENCH_SRC)/run_redis.py --ours-python $(PY) $(BENCH_REDIS_ARGS)

bench-redis-throughput: venv
	$(BENCH_PYTHON) $(REDIS_BENCH_SRC)/run_redis.py --ours-python $(PY) --throughput $(BENCH_REDIS_ARGS)

bench-asyncio-suspend:
	$(BENCH_PYTHON) $(REDIS_BENCH_SRC)/asyncio_suspend.py

bench-uvloop: venv $(VENV)/.test-stamp
	$(PY) $(REDIS_BENCH_SRC)/bench_loop_latency.py $(BENCH_UVLOOP_ARGS)

# Issue 24's fleet: the 200k trace split over 4 processes sharing one Redis (benchmarks/FLEET.md).
# Knobs: make bench-fleet BENCH_FLEET_ARGS="--processes 4 --workers 1000 --contenders ours,030"
BENCH_FLEET_ARGS ?=
.PHONY: bench-fleet

bench-fleet: venv bench-redis-venvs
	$(BENCH_PYTHON) $(REDIS_BENCH_SRC)/run_fleet.py --ours-python $(PY) $(BENCH_FLEET_ARGS)

# Issue 25's hot keys as they expire: ours plain/ttl_jitter/refresh_after/early_refresh/
# stale_if_error vs cashews early/soft, local and [local, redis] (benchmarks/EXPIRY.md).
# Knobs: make bench-expiry BENCH_EXPIRY_ARGS="--duration 20 --storages local,chain"
BENCH_EXPIRY_ARGS ?=
.PHONY: bench-expiry

bench-expiry: venv bench-redis-venvs
	$(BENCH_PYTHON) $(REDIS_BENCH_SRC)/run_expiry.py --ours-python $(PY) $(BENCH_EXPIRY_ARGS)
