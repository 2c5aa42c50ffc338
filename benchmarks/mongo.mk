# MongoDB storage benchmark. Included by the root Makefile (which provides PY
# and the target `venv`); the server is mongoeco (pure Python, in-memory) from
# .bench/venv-mongoeco, started on a free port (tests/mongo_servers.py).
# See benchmarks/MONGO.md.
#
#   make bench-mongo         write/read/batch20 sequential and 1k workers x 20 gets:
#                            ours vs cacheme 0.3.0 (motor), wall time and client CPU per op;
#                            figures also in benchmarks/results/mongo.json
#   make bench-mongo-venvs   (re)create .bench/venv-mongoeco and .bench/venv-mongo-030
#
# Knobs: make bench-mongo BENCH_MONGO_ARGS="--contenders 030 --rounds 1 --url mongodb://..."

MONGO_BENCH_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_PYTHON ?= python3
BENCH_MONGO_ARGS ?=

.PHONY: bench-mongo bench-mongo-venvs

bench-mongo-venvs:
	PYTHON=$(BENCH_PYTHON) bash $(MONGO_BENCH_SRC)/mongo_venvs.sh

bench-mongo: venv bench-mongo-venvs
	$(PY) $(MONGO_BENCH_SRC)/bench_mongo.py --json $(MONGO_BENCH_SRC)/results/mongo.json $(BENCH_MONGO_ARGS)
