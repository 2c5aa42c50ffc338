# C unit tests of the pure-C MongoDB OP_MSG framing (csrc/mongo/wire.c); include
# from tests/c/Makefile or run directly:
#   make -C tests/c -f wire.mk wire-valgrind | wire-asan | wire-run
WIRE_CC ?= cc
WIRE_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
WIRE_CSRC := $(WIRE_DIR)/../../csrc
WIRE_SRCS := $(WIRE_CSRC)/mongo/wire.c
WIRE_HDRS := $(WIRE_CSRC)/mongo/wire.h
WIRE_CFLAGS := -Wall -Wextra -Werror -O1 -g -I$(WIRE_CSRC)
WIRE_SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

.PHONY: wire-valgrind wire-run wire-asan wire-clean

$(WIRE_DIR)/test_wire: $(WIRE_DIR)/test_wire.c $(WIRE_SRCS) $(WIRE_HDRS)
	$(WIRE_CC) $(WIRE_CFLAGS) -o $@ $(WIRE_DIR)/test_wire.c $(WIRE_SRCS)

$(WIRE_DIR)/test_wire_asan: $(WIRE_DIR)/test_wire.c $(WIRE_SRCS) $(WIRE_HDRS)
	$(WIRE_CC) $(WIRE_CFLAGS) $(WIRE_SANFLAGS) -o $@ $(WIRE_DIR)/test_wire.c $(WIRE_SRCS)

wire-valgrind: $(WIRE_DIR)/test_wire
	valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all -q $(WIRE_DIR)/test_wire

wire-run: $(WIRE_DIR)/test_wire
	$(WIRE_DIR)/test_wire

wire-asan: $(WIRE_DIR)/test_wire_asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(WIRE_DIR)/test_wire_asan

wire-clean:
	rm -f $(WIRE_DIR)/test_wire $(WIRE_DIR)/test_wire_asan
