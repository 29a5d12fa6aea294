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

# By mark (tests/conftest.py marks tests/kernel `kernel` and tests/e2e `e2e`): the unit tests need
# no root; kernel and e2e tests use machine-global names, so run them under /tmp/cilia-lab.lock.
test-unit:
	$(PY) -m pytest tests -q -m "not kernel and not e2e"

test-kernel:
	$(PY) -m pytest tests -q -m kernel

test-e2e:
	$(PY) -m pytest tests -q -m e2e

demo: install
	$(VENV)/bin/python -m cilia.lab.demo

lint:
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.run

clean:
	rm -rf build
