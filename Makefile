# cilia: the two commands a user needs are `make demo` and `make test`; both install first.
VENV ?= /opt/cilia/venv
PY := $(VENV)/bin/python
CLANG ?= clang
BPF_OUT := build/bpf
BPF_SRCS := $(wildcard bpf/*.c)
BPF_OBJS := $(patsubst bpf/%.c,$(BPF_OUT)/%.o,$(BPF_SRCS))
BPF_HDRS := $(wildcard bpf/lib/*.h)
ARCH_INC := /usr/include/$(shell uname -m)-linux-gnu
BPF_CFLAGS := -O2 -g -target bpf -Wall -Wextra -Wshadow -Werror -Wno-unused-function -I bpf -I $(ARCH_INC) -D__TARGET_ARCH_x86

.PHONY: install bpf proto test test-unit test-kernel test-e2e demo lint bench clean

install:
	bash scripts/install-deps.sh

bpf: $(BPF_OBJS)

# Python modules for Hubble's gRPC API, from src/cilia/hubble/proto (grpcio-tools; gitignored output)
proto:
	$(PY) -m cilia.hubble.codegen

$(BPF_OUT)/%.o: bpf/%.c $(BPF_HDRS)
	@mkdir -p $(BPF_OUT)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

test: install
	bash scripts/run-tests.sh

test-unit:
	$(PY) -m pytest tests/unit -q

test-kernel:
	$(PY) -m pytest tests/kernel -q

test-e2e:
	$(PY) -m pytest tests/e2e -q

demo: install
	$(VENV)/bin/python -m cilia.lab.demo

lint:
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.run

clean:
	rm -rf build
