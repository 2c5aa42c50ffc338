# C unit tests of the pure-C Redis protocol files (resp.c, crc16.c); include
# from tests/c/Makefile or run directly:
#   make -C tests/c -f resp.mk resp-valgrind | resp-asan | resp-run
RESP_CC ?= cc
RESP_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
RESP_CSRC := $(RESP_DIR)/../../csrc
RESP_SRCS := $(RESP_CSRC)/redis/resp.c $(RESP_CSRC)/redis/crc16.c
RESP_HDRS := $(RESP_CSRC)/redis/resp.h $(RESP_CSRC)/redis/crc16.h
RESP_CFLAGS := -Wall -Wextra -Werror -O1 -g -I$(RESP_CSRC)
RESP_SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

.PHONY: resp-valgrind resp-run resp-asan resp-clean

$(RESP_DIR)/test_resp: $(RESP_DIR)/test_resp.c $(RESP_SRCS) $(RESP_HDRS)
	$(RESP_CC) $(RESP_CFLAGS) -o $@ $(RESP_DIR)/test_resp.c $(RESP_SRCS)

$(RESP_DIR)/test_resp_asan: $(RESP_DIR)/test_resp.c $(RESP_SRCS) $(RESP_HDRS)
	$(RESP_CC) $(RESP_CFLAGS) $(RESP_SANFLAGS) -o $@ $(RESP_DIR)/test_resp.c $(RESP_SRCS)

resp-valgrind: $(RESP_DIR)/test_resp
	valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all -q $(RESP_DIR)/test_resp

resp-run: $(RESP_DIR)/test_resp
	$(RESP_DIR)/test_resp

resp-asan: $(RESP_DIR)/test_resp_asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(RESP_DIR)/test_resp_asan

resp-clean:
	rm -f $(RESP_DIR)/test_resp $(RESP_DIR)/test_resp_asan
