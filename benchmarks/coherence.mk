# Coherence of local tiers across processes (Storage(url, tracking=True)).
# Included by the root Makefile (which provides PY and the target `venv`);
# needs redis-server. See benchmarks/COHERENCE.md.
#
#   make bench-coherence   invalidate() in one process -> another's next get sees the new
#                          value (p50/p99), and Redis commands, memory and local hit ratio
#                          with tracking off and on (several reader processes)
#
# Knobs: make bench-coherence BENCH_COHERENCE_ARGS="--rounds 1000 --readers 4"

COHERENCE_BENCH_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_COHERENCE_ARGS ?=

.PHONY: bench-coherence

bench-coherence: venv $(VENV)/.test-stamp
	$(PY) $(COHERENCE_BENCH_SRC)/coherence.py $(BENCH_COHERENCE_ARGS)
