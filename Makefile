# The verbs a newcomer uses. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Debian packages by the command that proves each is there. kubectl may come from
# another package (e.g. a cloud SDK), so it is only installed when no kubectl exists.
# PostgreSQL's server binaries live off PATH (/usr/lib/postgresql/15/bin): its probe is
# pg_ctlcluster (postgresql-common, which postgresql-15 brings). p11-kit-modules gives
# p11-kit-client.so, the module the replica tests load to reach one shared token, in
# the architecture's multiarch directory (as tests/replica_cluster.py finds it).
MULTIARCH := $(shell $(PYTHON) -c 'import platform, sysconfig; print(sysconfig.get_config_var("MULTIARCH") or platform.machine() + "-linux-gnu")')
DEB_NEEDS := softhsm2-util:softhsm2 pkcs11-tool:opensc openssl:openssl etcd:etcd-server etcdctl:etcd-client kubectl:kubernetes-client \
	pg_ctlcluster:postgresql-15 psql:postgresql-client-15 p11-kit:p11-kit \
	/usr/lib/$(MULTIARCH)/pkcs11/p11-kit-client.so:p11-kit-modules
# What `make bench` adds, by a file that proves each is there (grpc-go is a source tree,
# no command): the peer CA, and Go with grpc-go to build the native load generator.
BENCH_DEB_NEEDS := /usr/bin/cfssl:golang-cfssl /usr/bin/go:golang-go /usr/share/gocode/src/google.golang.org/grpc/server.go:golang-google-grpc-dev
PROTO_SRC := proto/kubeca/v1/kubeca.proto proto/externaljwt/v1/externaljwt.proto proto/externaljwt/v1alpha1/externaljwt.proto
PROTO_OUT := client/kubeca_client/_proto

.PHONY: help deps deps-system deps-python deps-bench proto proto-check lint unit test fuzz campaign demo serve bench bench-signer bench-replicas terraform-provider clean

help:
	@echo "make demo   - dev SoftHSM token, init the CAs, serve, issue every profile into demo/"
	@echo "make test   - install what is missing, lint, type-check, proto drift check, all tests"
	@echo "make serve  - the dev server in the foreground (after make demo has set up var/)"
	@echo "make bench  - kubeca vs the HSM's raw rate vs cfssl, 1-64 connections, with a plot"
	@echo "make bench-signer - ExternalJWTSigner Sign via socket and proxy vs the HSM raw rate"
	@echo "make bench-replicas - two replicas on PostgreSQL beside one server on SQLite"
	@echo "make fuzz   - the fuzz suite at ten times the cases make test runs"
	@echo "make campaign - 12,000 hostile requests over mutual TLS to a real server, tallied"
	@echo "make proto  - regenerate $(PROTO_OUT) from proto/"
	@echo "make terraform-provider - install kubeca/kubeca into ~/.terraform.d/plugins (or TF_MIRROR=DIR)"

deps: deps-system deps-python

deps-system:
	@missing=""; for pair in $(DEB_NEEDS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || test -e $$cmd || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

deps-python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,terraform,dev]'
	touch $@

proto: deps-python
	bash scripts/gen-proto.sh $(PY) $(PROTO_OUT)

# Regenerate into a scratch directory and compare: CI fails when the committed code drifts.
proto-check: deps-python
	@tmp=$$(mktemp -d); bash scripts/gen-proto.sh $(PY) $$tmp/out >/dev/null; \
	if diff -r -x __pycache__ $$tmp/out $(PROTO_OUT) >/dev/null; then echo "proto: generated code matches proto/"; rm -rf $$tmp; \
	else echo "proto: $(PROTO_OUT) drifted from proto/; run 'make proto'"; diff -r -x __pycache__ $$tmp/out $(PROTO_OUT) | head -20; rm -rf $$tmp; exit 1; fi

lint: deps-python
	$(BIN)/ruff check client server tests bench scripts
	$(BIN)/ruff format --check client server tests bench scripts
	$(BIN)/mypy

unit: deps-python
	$(BIN)/pytest -q tests/unit

test: deps lint proto-check
	$(BIN)/pytest -q -ra tests

# tests/fuzz runs in make test at scale 1 (over 10,000 cases); this runs ten times more.
FUZZ_SCALE ?= 10
fuzz: deps-python
	KUBECA_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -q tests/fuzz

CAMPAIGN_REQUESTS ?= 12000
campaign: deps
	$(PY) bench/campaign.py --requests $(CAMPAIGN_REQUESTS)

demo: deps
	bash scripts/demo.sh

serve: deps
	@test -f var/kubeca.toml || { echo "var/kubeca.toml is missing: run 'make demo' once first"; exit 2; }
	SOFTHSM2_CONF=$(CURDIR)/var/softhsm2.conf $(BIN)/kubeca-server --config var/kubeca.toml serve

# Python's bench needs (matplotlib, py-spy) are the [bench] extra of pyproject.toml.
deps-bench: deps
	@missing=""; for pair in $(BENCH_DEB_NEEDS); do \
	  path=$${pair%%:*}; pkg=$${pair##*:}; \
	  test -e $$path || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@$(PY) -c "import matplotlib" 2>/dev/null && test -x $(BIN)/py-spy || $(PY) -m pip install -q -e '.[server,dev,bench]'

bench: deps-bench
	$(PY) bench/issuance.py

bench-signer: deps
	$(PY) bench/signer.py

bench-replicas: deps
	$(PY) bench/replicas.py

# The native Terraform provider, into Terraform's implied mirror (no CLI config needed)
# or into TF_MIRROR, printing the provider_installation block that mirror needs.
terraform-provider: deps-python
	$(BIN)/kubeca terraform-provider install $(if $(TF_MIRROR),--mirror $(TF_MIRROR))

clean:
	rm -rf var demo .pytest_cache .mypy_cache .ruff_cache .hypothesis campaign.json
