# The two commands of the README: `make dev` (whole platform) and `make test` (whole test suite).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The services' URLs follow their ports (POSTGRES_PORT, REDIS_PORT, KAFKA_PORT, …), so every
# Django command runs with the environment `platform/services env` prints.
WITH_SERVICES := eval "$$(platform/services env)" &&
# The providers' settings for development (every adapter pointed at the local sandboxes, the
# Procfile's `sandbox` process): exported to every process `make dev` starts.
WITH_SANDBOX := set -a && . platform/sandbox.env && set +a &&

.PHONY: install services migrate topics dev test test-cluster faults lint format bench spike down

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

services:
	platform/services up

migrate: install services
	$(WITH_SERVICES) $(PY) manage.py migrate --noinput

topics: install services
	$(WITH_SERVICES) $(PY) manage.py ensure_topics

# Brings up PostgreSQL, Redis and Kafka, migrates, creates the dev superuser and demo data and the
# sandboxes' key files, and runs every platform process from the Procfile against the provider
# sandboxes (Ctrl-C stops them; `make down` stops the services).
dev: migrate topics
	$(WITH_SERVICES) DJANGO_DEBUG=1 $(PY) manage.py bootstrap_dev
	$(PY) -m provider_sandbox.credentials
	$(PY) manage.py collectstatic --noinput -v 0
	$(WITH_SERVICES) $(WITH_SANDBOX) DJANGO_DEBUG=1 honcho start

test: install services
	$(WITH_SERVICES) $(PY) -m pytest $(PYTEST_ARGS)

# The cluster topology's tests (three Kafka brokers, a Redis Cluster; platform/ci-cluster), a few minutes.
test-cluster: install
	platform/ci-cluster $(PYTEST_ARGS)

# The fault-injection suite (tests/faults, README "Fault injection"): it restarts PostgreSQL, Redis and
# Kafka, so it brings up a private set of them in FAULTS_STATE_DIR on the FAULTS_*_PORT ports, runs
# against it and stops it; the shared services are never touched. FAULTS_SCALE=0.3 is CI's size.
FAULTS_STATE_DIR ?= $(CURDIR)/.platform-faults
FAULTS_POSTGRES_PORT ?= 55632
FAULTS_REDIS_PORT ?= 56579
FAULTS_KAFKA_PORT ?= 59492
FAULTS_KAFKA_CONTROLLER_PORT ?= 59493
faults: install
	export PLATFORM_STATE_DIR=$(FAULTS_STATE_DIR) POSTGRES_PORT=$(FAULTS_POSTGRES_PORT) \
		REDIS_PORT=$(FAULTS_REDIS_PORT) KAFKA_PORT=$(FAULTS_KAFKA_PORT) \
		KAFKA_CONTROLLER_PORT=$(FAULTS_KAFKA_CONTROLLER_PORT) FAULTS_PRIVATE_SERVICES=1 && \
	platform/services up && eval "$$(platform/services env)" && \
	{ $(PY) -m pytest -m faults tests/faults -s $(PYTEST_ARGS); status=$$?; platform/services down; exit $$status; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install services migrate topics
	$(WITH_SERVICES) $(PY) benchmarks/relay_throughput.py

# The spike scenario (benchmarks/README.md, "spike.py"), e.g. make spike SPIKE_ARGS="--users 3000".
spike: install services migrate topics
	$(WITH_SERVICES) $(PY) benchmarks/spike.py $(SPIKE_ARGS)

down:
	platform/services down
