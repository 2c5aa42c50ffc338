# Side-by-side benchmarks. Included by the root Makefile, which provides
#   PY   = .venv/bin/python   (our build)   and the target `venv` that builds it.
# Drivers need only the standard library; they run each contender in its own venv.
#
#   make bench-local       local hit path: ours vs cacheme 0.3.0 vs theine (ns/op, ratios)
#   make bench-hitratio    hit ratio on generated traces: ours tlfu/lru vs theine vs Belady
#   make bench             both, one after the other (never in parallel: 2 cores, noisy)
#   make bench-venvs       (re)create the peer venvs under .bench/ (idempotent)
#   make bench-local-instr the local paths in instructions per call (callgrind): ours vs 0.3.0
#   make bench-charts      redraw benchmarks/charts/*.svg from benchmarks/results/*.json
#                          (matplotlib in .venv-charts; a driver's --json OUT refreshes a file)
#   make bench-get-all     get_all of 100 nodes (local hits, Redis hits, loads): the C get_all
#                          vs the Python one it replaced (benchmarks/get_all_py.py), same run
#
# Knobs:  make bench-local BENCH_LOCAL_ARGS="--rounds 9 -n 300000"
#         make bench-hitratio BENCH_HITRATIO_ARGS="--sizes 1000,10000"
# .bench/ (venvs, traces, cached Belady results) must stay git-ignored.

BENCH_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_TOP_MAKEFILE := $(firstword $(MAKEFILE_LIST))
BENCH_PYTHON ?= python3
BENCH_LOCAL_ARGS ?=
BENCH_HITRATIO_ARGS ?=
BENCH_GET_ALL_ARGS ?=

.PHONY: bench bench-local bench-local-instr bench-hitratio bench-venvs bench-charts
.PHONY: bench-get-all

bench-venvs:
	PYTHON=$(BENCH_PYTHON) bash $(BENCH_SRC)/venvs.sh

bench-local: venv bench-venvs
	$(BENCH_PYTHON) $(BENCH_SRC)/run_local.py --ours-python $(PY) $(BENCH_LOCAL_ARGS)

bench-local-instr: venv bench-venvs
	$(BENCH_PYTHON) $(BENCH_SRC)/instr_local.py --ours-python $(PY)

bench-get-all: venv
	$(PY) $(BENCH_SRC)/bench_get_all.py $(BENCH_GET_ALL_ARGS)

bench-hitratio: venv bench-venvs
	$(BENCH_PYTHON) $(BENCH_SRC)/run_hitratio.py --ours-python $(PY) $(BENCH_HITRATIO_ARGS)

# sequential on purpose (a plain `bench: bench-local bench-hitratio` would run both at once under -j)
bench: venv bench-venvs
	$(MAKE) --no-print-directory -f $(BENCH_TOP_MAKEFILE) bench-local
	$(MAKE) --no-print-directory -f $(BENCH_TOP_MAKEFILE) bench-hitratio

# The README's charts. matplotlib lives in a venv of its own so that neither
# `make test` nor the peers' venvs carry it.
CHARTS_VENV := .venv-charts

$(CHARTS_VENV)/.stamp:
	$(BENCH_PYTHON) -m venv $(CHARTS_VENV)
	$(CHARTS_VENV)/bin/pip install -q --disable-pip-version-check "matplotlib>=3.8"
	touch $@

bench-charts: $(CHARTS_VENV)/.stamp
	$(CHARTS_VENV)/bin/python $(BENCH_SRC)/charts.py
