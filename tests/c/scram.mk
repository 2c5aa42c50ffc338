# C unit tests of the pure-C SCRAM client (csrc/mongo/scram.c, with the one-line base64 of
# csrc/ser/base64.c), linked to OpenSSL's libcrypto through pkg-config; include from
# tests/c/Makefile or run directly:
#   make -C tests/c -f scram.mk scram-valgrind | scram-asan | scram-run
SCRAM_CC ?= cc
SCRAM_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
SCRAM_CSRC := $(SCRAM_DIR)/../../csrc
SCRAM_SRCS := $(SCRAM_CSRC)/ser/base64.c
SCRAM_DEPS := $(SCRAM_SRCS) $(SCRAM_CSRC)/mongo/scram.c $(SCRAM_CSRC)/mongo/scram.h \
  $(SCRAM_CSRC)/ser/base64.h
SCRAM_CFLAGS := -Wall -Wextra -Werror -O1 -g -I$(SCRAM_CSRC) $(shell pkg-config --cflags openssl)
SCRAM_LDLIBS := $(shell pkg-config --libs libcrypto)
SCRAM_SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

.PHONY: scram-valgrind scram-run scram-asan scram-clean

# test_scram.c includes scram.c itself (to look into the cache)
$(SCRAM_DIR)/test_scram: $(SCRAM_DIR)/test_scram.c $(SCRAM_DEPS)
	$(SCRAM_CC) $(SCRAM_CFLAGS) -o $@ $(SCRAM_DIR)/test_scram.c $(SCRAM_SRCS) $(SCRAM_LDLIBS)

$(SCRAM_DIR)/test_scram_asan: $(SCRAM_DIR)/test_scram.c $(SCRAM_DEPS)
	$(SCRAM_CC) $(SCRAM_CFLAGS) $(SCRAM_SANFLAGS) -o $@ $(SCRAM_DIR)/test_scram.c $(SCRAM_SRCS) $(SCRAM_LDLIBS)

scram-valgrind: $(SCRAM_DIR)/test_scram
	valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all -q $(SCRAM_DIR)/test_scram

scram-run: $(SCRAM_DIR)/test_scram
	$(SCRAM_DIR)/test_scram

scram-asan: $(SCRAM_DIR)/test_scram_asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(SCRAM_DIR)/test_scram_asan

scram-clean:
	rm -f $(SCRAM_DIR)/test_scram $(SCRAM_DIR)/test_scram_asan
