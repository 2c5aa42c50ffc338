# Serializer benchmark and fuzzing. Included by the root Makefile, which
# provides PY = .venv/bin/python (our build).
#
#   make bench-serializer   dumps/loads per serializer on the 0.3.0-style small/medium/large
#                           documents: ours vs cacheme 0.3.0 vs msgpack vs orjson, plus a live
#                           0.3.0 <-> ours round trip of the value table (both ways)
#   make fuzz               libFuzzer (+ASan/UBSan) on the msgpack / zlib / JSON / pickle
#                           decoders (pickle allowlist canaries), then on hiredis's reader
#                           under the Redis reply bounds (fuzz_resp), FUZZ_SECONDS (default
#                           600) each; crashes land in .bench/fuzz/findings/
#   make fuzz-build         just build the two targets (installs clang if missing)
#   make serializer-vectors regenerate tests/data/serializer_vectors_030.json with cacheme 0.3.0

SER_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
SER_ROOT := $(abspath $(SER_SRC)/..)
PY ?= .venv/bin/python
SER_BENCH_PYTHON ?= python3
SER_BENCH_ARGS ?=
SER_VENV_030 := $(SER_ROOT)/.bench/venv-030
FUZZ_SECONDS ?= 600
FUZZ_ARGS ?=
FUZZ_CC ?= clang
FUZZ_DIR := $(SER_ROOT)/.bench/fuzz
FUZZ_BIN := $(FUZZ_DIR)/fuzz_serializer
FUZZ_PYCONFIG = $(shell $(PY) -c "import sysconfig, os; print(os.path.join(sysconfig.get_config_var('BINDIR'), 'python' + sysconfig.get_config_var('VERSION') + '-config'))")
FUZZ_SRCS := $(addprefix $(SER_ROOT)/,fuzz/fuzz_serializer.c csrc/ser/serializer.c csrc/ser/object.c \
               csrc/ser/object_encode.c csrc/ser/object_decode.c csrc/ser/msgpack_encode.c \
               csrc/ser/msgpack_decode.c csrc/ser/compress.c csrc/ser/base64.c csrc/ser/pickle.c)
FUZZ_RESP_BIN := $(FUZZ_DIR)/fuzz_resp

.PHONY: bench-serializer fuzz fuzz-build serializer-venv serializer-vectors

# the 0.3.0 venv (cacheme 0.3.0 brings msgpack and pydantic<2); orjson and msgpack go next to
# our build so that every contender is timed in one process, one run
serializer-venv:
	[ -x $(SER_VENV_030)/bin/python ] || $(SER_BENCH_PYTHON) -m venv $(SER_VENV_030)
	$(SER_VENV_030)/bin/python -c 'import importlib.metadata as m; assert m.version("cacheme") == "0.3.0"' 2>/dev/null \
	  || $(SER_VENV_030)/bin/python -m pip install --quiet --disable-pip-version-check 'cacheme==0.3.0'
	$(PY) -c 'import msgpack, orjson' 2>/dev/null || $(PY) -m pip install --quiet msgpack orjson

bench-serializer: serializer-venv
	$(SER_VENV_030)/bin/python $(SER_SRC)/roundtrip_030.py --ours-python $(PY)
	$(PY) $(SER_SRC)/bench_serializer.py --venv-030 $(SER_VENV_030) $(SER_BENCH_ARGS)

serializer-vectors: serializer-venv
	$(SER_VENV_030)/bin/python $(SER_SRC)/gen_vectors_030.py $(SER_ROOT)/tests/data/serializer_vectors_030.json

$(FUZZ_BIN): $(FUZZ_SRCS) $(wildcard $(SER_ROOT)/csrc/*.h $(SER_ROOT)/csrc/*/*.h)
	@command -v $(FUZZ_CC) >/dev/null || { \
	  echo "installing system packages: clang (libFuzzer)"; \
	  $(APT_INSTALL) clang >/dev/null; }
	mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	  -I$(SER_ROOT)/csrc $$($(FUZZ_PYCONFIG) --includes) $$(pkg-config --cflags msgpack-c 2>/dev/null || pkg-config --cflags msgpack) \
	  $(FUZZ_SRCS) -o $@ \
	  $$($(FUZZ_PYCONFIG) --embed --ldflags) $$(pkg-config --libs msgpack-c 2>/dev/null || pkg-config --libs msgpack) -lz

# plain C: hiredis's reader and csrc/resp.h's bounds (no Python)
$(FUZZ_RESP_BIN): $(SER_ROOT)/fuzz/fuzz_resp.c $(SER_ROOT)/csrc/redis/resp.h
	@command -v $(FUZZ_CC) >/dev/null || { \
	  echo "installing system packages: clang (libFuzzer)"; \
	  $(APT_INSTALL) clang >/dev/null; }
	mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	  -I$(SER_ROOT)/csrc $$(pkg-config --cflags hiredis) $< -o $@ $$(pkg-config --libs hiredis)

fuzz-build: $(FUZZ_BIN) $(FUZZ_RESP_BIN)

fuzz: $(FUZZ_BIN) $(FUZZ_RESP_BIN)
	mkdir -p $(FUZZ_DIR)/corpus $(FUZZ_DIR)/corpus-resp $(FUZZ_DIR)/findings
	PYTHONPATH=$(SER_ROOT) $(PY) $(SER_ROOT)/fuzz/make_seeds.py $(FUZZ_DIR)/corpus $(FUZZ_DIR)/corpus-resp
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -dict=$(SER_ROOT)/fuzz/serializer.dict \
	  -artifact_prefix=$(FUZZ_DIR)/findings/ -print_final_stats=1 -rss_limit_mb=4096 $(FUZZ_ARGS) $(FUZZ_DIR)/corpus
	ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(FUZZ_RESP_BIN) -max_total_time=$(FUZZ_SECONDS) -dict=$(SER_ROOT)/fuzz/resp.dict \
	  -artifact_prefix=$(FUZZ_DIR)/findings/resp- -print_final_stats=1 -rss_limit_mb=2048 $(FUZZ_ARGS) $(FUZZ_DIR)/corpus-resp
