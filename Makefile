# cacheme: the two commands a newcomer needs are `make demo` and `make test`.
#
#   make demo        system libraries, .venv with cacheme built, a short demo
#   make test        the same plus test tools and servers, clang-format check, the C unit
#                    tests under valgrind, pytest, the API/Redis/SQL tests again on uvloop,
#                    an sdist install, the Redis tests on hiredis 1.x, a build without
#                    private CPython API, and the suite on pyenv's CPython 3.12 and 3.13
#                    where present
#   make test-uvloop the API, Redis and SQL test modules on uvloop (CACHEME_TEST_LOOP)
#   make test-asan   pytest against an ASan/UBSan build of the extension
#   make test-debug  pytest against a debug build (asserts on, -O0)
#   make bench       side-by-side benchmarks (see benchmarks/README.md)
#   make format      clang-format the C sources
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CSRC := $(wildcard csrc/*.c csrc/*.h csrc/*/*.c csrc/*/*.h)
export CACHEME_WERROR ?= 1

.PHONY: all deps venv build demo test test-c test-py test-uvloop test-venvs test-sdist test-asan test-debug test-hiredis1 test-versions test-version test-no-private format format-check clean

all: build

# apt-get install of the packages that follow it (as root, or through sudo)
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq

# System C libraries (Debian). Installed only when pkg-config can't find them.
deps:
	@missing=""; \
	pkg-config --exists hiredis 2>/dev/null || missing="$$missing libhiredis-dev"; \
	{ pkg-config --exists msgpack-c 2>/dev/null || pkg-config --exists msgpack 2>/dev/null; } || missing="$$missing libmsgpack-dev"; \
	pkg-config --exists zlib 2>/dev/null || missing="$$missing zlib1g-dev"; \
	pkg-config --exists openssl || missing="$$missing libssl-dev"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v clang-format >/dev/null || missing="$$missing clang-format"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	pkg-config --exists libpq 2>/dev/null || missing="$$missing libpq-dev"; \
	{ pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mariadb 2>/dev/null; } || missing="$$missing libmariadb-dev"; \
	pkg-config --exists sqlite3 2>/dev/null || missing="$$missing libsqlite3-dev"; \
	pkg-config --exists libbson-1.0 2>/dev/null || missing="$$missing libbson-dev"; \
	pkg-config --exists openssl 2>/dev/null || missing="$$missing libssl-dev"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	{ command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } || missing="$$missing mariadb-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(APT_INSTALL) $$missing >/dev/null; \
	fi

$(VENV)/.stamp: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	touch $@

venv: deps $(VENV)/.stamp build

# Build the extension in place; the venv sees the tree through a .pth file.
build: $(VENV)/.stamp $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	@echo "$(CURDIR)" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/cacheme-dev.pth

# Test tools; pydantic (2.x, which also carries the v1 API) and msgpack for
# the serializer tests; fastapi, uvicorn, gunicorn, aiohttp and httpx to run
# the service examples (tests/test_examples.py); prometheus_client and
# opentelemetry-api/-sdk for the exporters (tests/test_exporters.py); cacheme 0.3.0 in its own venv
# for the tests that share a cache with it.
TEST_PKGS := "pytest>=7" "pytest-asyncio>=0.23" "pytest-timeout>=2" "mypy>=1.5" "pydantic>=2" msgpack uvloop \
             fastapi uvicorn gunicorn aiohttp httpx prometheus_client opentelemetry-api opentelemetry-sdk
$(VENV)/.test-stamp: $(VENV)/.stamp pyproject.toml Makefile
	$(PIP) install -q $(TEST_PKGS)
	touch $@

test-venvs:
	bash benchmarks/sql_venvs.sh
	bash benchmarks/mongo_venvs.sh

demo: venv
	$(PY) examples/demo.py

test-c: deps
	$(MAKE) -C tests/c valgrind
	$(MAKE) -C tests/c -f resp.mk resp-valgrind
	$(MAKE) -C tests/c -f scram.mk scram-valgrind
	$(MAKE) -C tests/c -f wire.mk wire-valgrind

test-py: venv $(VENV)/.test-stamp test-venvs
	$(PY) -m pytest tests -q --timeout 300

# The modules whose tests run on an event loop of their own, again on uvloop
# (uvicorn's loop when installed), busy polling included.
UVLOOP_TESTS := tests/test_api.py tests/test_redis.py tests/test_sql.py tests/test_uvloop.py \
  tests/test_shapes_connect.py tests/test_redis_tls.py tests/test_mongo.py tests/test_tracking.py

test-uvloop: venv $(VENV)/.test-stamp test-venvs
	CACHEME_TEST_LOOP=uvloop $(PY) -m pytest $(UVLOOP_TESTS) -q --timeout 300

test: format-check test-c test-py test-uvloop test-sdist test-hiredis1 test-no-private test-versions

# The suite again on the other supported CPythons (make test runs .venv's
# first): pyenv's newest X.Y.* where pyenv is, else pythonX.Y on PATH. Each
# gets its own .venv-X.Y and its own in-place build (the .so names carry the
# ABI tag). Says which versions ran and which were not found.
EXTRA_PYTHONS ?= 3.12 3.13
test-versions: venv $(VENV)/.test-stamp test-venvs
	@ran="$$($(PY) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"; missing=""; \
	for v in $(EXTRA_PYTHONS); do \
	  py=""; \
	  if command -v pyenv >/dev/null 2>&1; then \
	    full=$$(pyenv versions --bare 2>/dev/null | grep -xE "$$v\.[0-9]+" | sort -V | tail -1); \
	    if [ -n "$$full" ] && [ -x "$$(pyenv prefix $$full)/bin/python$$v" ]; then py="$$(pyenv prefix $$full)/bin/python$$v"; fi; \
	  fi; \
	  [ -n "$$py" ] || py="$$(command -v python$$v || true)"; \
	  if [ -z "$$py" ]; then missing="$$missing $$v"; continue; fi; \
	  $(MAKE) --no-print-directory test-version V=$$v VPY="$$py" || exit 1; \
	  ran="$$ran, $$("$$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"; \
	done; \
	echo "make test: the suite ran on CPython $$ran; not found:$${missing:- none}"

test-version:
	@[ -n "$(V)" ] && [ -n "$(VPY)" ] || { echo "test-version: V=X.Y VPY=/path/to/python"; exit 2; }
	[ -x .venv-$(V)/bin/python ] || $(VPY) -m venv .venv-$(V)
	.venv-$(V)/bin/pip install -q --disable-pip-version-check --upgrade pip setuptools wheel $(TEST_PKGS)
	.venv-$(V)/bin/python setup.py -q build_ext --inplace
	echo "$(CURDIR)" > $$(.venv-$(V)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/cacheme-dev.pth
	.venv-$(V)/bin/python -m pytest tests -q --timeout 300

# The public fallbacks of every version-gated private call (csrc/compat.h,
# key.c's hash secret, the msgpack dict templates), forced by
# CACHEME_NO_PRIVATE=1, against the tests of the paths they change.
test-no-private: deps $(VENV)/.test-stamp
	rm -rf build/noprivate-pkg && mkdir -p build/noprivate-pkg
	CACHEME_NO_PRIVATE=1 $(PY) setup.py -q build_ext --build-lib build/noprivate-pkg --build-temp build/noprivate-tmp --force
	cp -r cacheme/*.py cacheme/*.pyi cacheme/py.typed cacheme/storages build/noprivate-pkg/cacheme/
	PYTHONPATH=$(CURDIR)/build/noprivate-pkg CACHEME_EXPECT_CORE=$(CURDIR)/build/noprivate-pkg \
	  CACHEME_EXPECT_PRIVATE=0 \
	  $(PY) -P -m pytest tests/test_platforms.py tests/test_api.py tests/test_local_store.py \
	    tests/test_serializer.py tests/test_singleflight.py -q -p no:cacheprovider --timeout 300

# An sdist built from the tree installs into a clean venv without a warning
# and imports; the installed package (not the tree) carries the DDL scripts,
# py.typed and the stubs.
test-sdist: venv
	rm -rf build/sdist && mkdir -p build/sdist
	$(PY) setup.py -q sdist -d build/sdist
	$(PYTHON) -m venv build/sdist/venv
	build/sdist/venv/bin/pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	build/sdist/venv/bin/pip install --disable-pip-version-check build/sdist/cacheme-*.tar.gz \
	  > build/sdist/pip.log 2>&1 || { cat build/sdist/pip.log; exit 1; }
	@# (pip's own notice of an index location this machine's pip.conf names is no build warning)
	@if grep -iE "warn|deprecat" build/sdist/pip.log | grep -v "^WARNING: Location '.*' is ignored"; then echo "test-sdist: pip install printed the warnings above"; exit 1; fi
	cd build/sdist && venv/bin/python -P -c "$$SDIST_CHECK"

define SDIST_CHECK
import importlib.resources as r, cacheme, cacheme._core
assert 'build/sdist/venv' in cacheme.__file__, cacheme.__file__
pkg = r.files('cacheme')
need = ['py.typed', '_core.pyi', 'storages/scripts/sqlite.sql', 'storages/scripts/postgresql.sql',
        'storages/scripts/mysql.sql', 'storages/scripts/mongo.js']
missing = [n for n in need if not pkg.joinpath(n).is_file()]
assert not missing, f'the installed package lacks {missing}'
print('sdist ok:', cacheme.__file__)
endef
export SDIST_CHECK

# The whole pytest suite against a sanitizer build kept apart in build/asan-pkg.
# TESTS: the test files test-asan and test-debug run (default: all).
TESTS ?= tests

test-asan: deps $(VENV)/.test-stamp test-venvs
	rm -rf build/asan-pkg && mkdir -p build/asan-pkg
	CACHEME_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib build/asan-pkg --build-temp build/asan-tmp --force
	cp -r cacheme/*.py cacheme/*.pyi cacheme/py.typed cacheme/storages build/asan-pkg/cacheme/
	PYTHONPATH=$(CURDIR)/build/asan-pkg PYTHONMALLOC=malloc \
	  LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  CACHEME_EXPECT_BUILD=asan CACHEME_EXPECT_CORE=$(CURDIR)/build/asan-pkg \
	  $(PY) -P -m pytest $(TESTS) -q -p no:cacheprovider --timeout 600
	$(MAKE) -C tests/c asan
	$(MAKE) -C tests/c -f resp.mk resp-asan
	$(MAKE) -C tests/c -f scram.mk scram-asan
	$(MAKE) -C tests/c -f wire.mk wire-asan

# The Redis tests against hiredis 1.x (Debian 12 ships 0.14): its C sources,
# taken from PyPI's hiredis sdist (hiredis-py vendors them), are built into a
# static library in build/hiredis1, found through a .pc file there, and the
# extension is built against it into build/hiredis1-pkg. Nothing lands in the tree.
HIREDIS1 := build/hiredis1
HIREDIS1_SDIST ?= hiredis==3.5.0
HIREDIS1_SRCS := alloc async hiredis net read sds sockcompat
test-hiredis1: deps $(VENV)/.test-stamp
	rm -rf $(HIREDIS1) build/hiredis1-pkg build/hiredis1-tmp
	mkdir -p $(HIREDIS1)/src $(HIREDIS1)/obj $(HIREDIS1)/include/hiredis $(HIREDIS1)/lib/pkgconfig build/hiredis1-pkg
	$(PIP) download -q --disable-pip-version-check --no-deps --no-binary :all: -d $(HIREDIS1) "$(HIREDIS1_SDIST)"
	tar -xzf $(HIREDIS1)/hiredis-*.tar.gz -C $(HIREDIS1)/src --strip-components=1
	for f in $(HIREDIS1_SRCS); do \
	  cc -std=c99 -O2 -fPIC -w -c $(HIREDIS1)/src/vendor/hiredis/$$f.c -o $(HIREDIS1)/obj/$$f.o || exit 1; \
	done
	ar rcs $(HIREDIS1)/lib/libhiredis.a $(HIREDIS1)/obj/*.o
	cp $(HIREDIS1)/src/vendor/hiredis/*.h $(HIREDIS1)/include/hiredis/
	v=$$(sed -n 's/^#define HIREDIS_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' $(HIREDIS1)/include/hiredis/hiredis.h | paste -sd.); \
	printf 'Name: hiredis\nDescription: hiredis %s from %s\nVersion: %s\nCflags: -I%s\nLibs: %s\n' \
	  "$$v" "$(HIREDIS1_SDIST)" "$$v" "$(CURDIR)/$(HIREDIS1)/include" "$(CURDIR)/$(HIREDIS1)/lib/libhiredis.a" \
	  > $(HIREDIS1)/lib/pkgconfig/hiredis.pc
	PKG_CONFIG_PATH=$(CURDIR)/$(HIREDIS1)/lib/pkgconfig:$${PKG_CONFIG_PATH:-} \
	  $(PY) setup.py -q build_ext --build-lib build/hiredis1-pkg --build-temp build/hiredis1-tmp --force
	cp -r cacheme/*.py cacheme/*.pyi cacheme/py.typed cacheme/storages build/hiredis1-pkg/cacheme/
	PYTHONPATH=$(CURDIR)/build/hiredis1-pkg CACHEME_EXPECT_CORE=$(CURDIR)/build/hiredis1-pkg \
	  CACHEME_EXPECT_HIREDIS=1 \
	  $(PY) -P -m pytest tests/test_redis.py tests/test_redis_cluster.py tests/test_tracking.py tests/test_lease.py -q -p no:cacheprovider --timeout 300

test-debug: deps $(VENV)/.test-stamp test-venvs
	rm -rf build/debug-pkg && mkdir -p build/debug-pkg
	CACHEME_DEBUG=1 $(PY) setup.py -q build_ext --build-lib build/debug-pkg --build-temp build/debug-tmp --force
	cp -r cacheme/*.py cacheme/*.pyi cacheme/py.typed cacheme/storages build/debug-pkg/cacheme/
	PYTHONPATH=$(CURDIR)/build/debug-pkg CACHEME_EXPECT_CORE=$(CURDIR)/build/debug-pkg \
	  $(PY) -P -m pytest $(TESTS) -q -p no:cacheprovider --timeout 600

format:
	clang-format -i $(CSRC) tests/c/*.c fuzz/*.c

format-check: deps
	clang-format --dry-run -Werror $(CSRC) tests/c/*.c fuzz/*.c

clean:
	rm -rf build $(VENV) .bench cacheme/*.so tests/c/test_algorithms tests/c/test_algorithms_asan

include benchmarks/bench.mk
include benchmarks/serializer.mk
include benchmarks/redis.mk
include benchmarks/sql.mk
include benchmarks/mongo.mk
include benchmarks/coherence.mk
