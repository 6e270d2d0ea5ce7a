# Two commands do all set-up on a fresh Debian machine (as root):
#   make demo   installs everything, runs the firewall graph over a trace,
#               then builds it into a VM and sends traffic through it
#   make test   installs everything, then runs the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps
BUILT  := $(VENV)/.built
CSRC   := $(wildcard runtime/*.c runtime/*.h runtime/*.pyx elements/*.c) setup.py
OUT    := out

.PHONY: all demo test debian setup bench clean

all: setup

# Debian packages: a C compiler, Python's venv and headers, Graphviz for
# `middlebox show -o graph.png`, QEMU for `middlebox boot` (graphs as VMs).
# Only what is missing is installed.
debian:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v ld >/dev/null || missing="$$missing binutils"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v make >/dev/null || missing="$$missing make"; \
	command -v dot >/dev/null || missing="$$missing graphviz"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing"; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(DEPS): pyproject.toml | debian
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=64" wheel
	$(BIN)/pip install -q "cython>=3" numpy pyyaml networkx scapy pytest hypothesis matplotlib dpkt
	touch $@

$(BUILT): $(DEPS) $(CSRC)
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

setup: debian $(BUILT)

demo: setup
	@mkdir -p $(OUT)
	$(BIN)/middlebox check graphs/firewall.yaml
	$(BIN)/middlebox show graphs/firewall.yaml -o $(OUT)/firewall.png
	$(BIN)/middlebox run graphs/firewall.yaml \
	  --in lan=tests/fixtures/firewall_lan.pcap --in wan=tests/fixtures/firewall_wan.pcap \
	  --out lan=$(OUT)/to-lan.pcap --out wan=$(OUT)/to-wan.pcap
	$(BIN)/python -c "from scapy.all import rdpcap; ps = rdpcap('$(OUT)/to-wan.pcap'); \
	  print(f'$(OUT)/to-wan.pcap: {len(ps)} packets, first: {ps[0].summary()}')"
	$(BIN)/python bench/classifier.py --packets 2000000
	$(BIN)/python -m middlebox.unikernel.demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

# The benchmark suite (about two minutes): every graph in bench/graphs/ and
# the firewall pcap replay against dpkt and scapy; writes
# bench/results/suite.json, PNG plots and the table in bench/README.md.
bench: setup
	@$(BIN)/python -c "import dpkt" 2>/dev/null || $(BIN)/pip install -q dpkt
	$(BIN)/python bench/suite.py

clean:
	rm -rf build $(OUT) runtime/_engine.c runtime/*.so *.egg-info
