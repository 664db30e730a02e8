# kvm.storage: `make demo` and `make test` set everything up first (scripts/setup.sh).
SHELL := /bin/bash
VENV ?= $(HOME)/.cache/kvm-storage/venv
export KVM_STORAGE_VENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(HOME)/.ansible/collections
export ANSIBLE_NOCOLOR := 1

.PHONY: setup demo test unit sanity lint integration molecule bench fuzz

setup:
	@bash scripts/setup.sh

demo: setup
	ansible-playbook -i playbooks/inventory.ini playbooks/demo.yml

test: setup
	@bash scripts/test.sh all

unit: setup
	@bash scripts/test.sh unit

sanity: setup
	@bash scripts/test.sh sanity

lint: setup
	@bash scripts/test.sh lint

# `make integration TARGETS="domain_disk lvm_volume_image"` runs only those targets
integration: setup
	@bash scripts/test.sh integration $(TARGETS)

.PHONY: docs packaging

# the collection's HTML documentation (antsibull-docs + Sphinx) in build/docs/ (open build/docs/index.html)
docs: setup
	@bash scripts/docs.sh build

# the collection as users get it: galaxy-importer, changelog and docs checks, tarball install + demo (scripts/packaging.sh)
packaging: setup
	@bash scripts/test.sh packaging

# a fleet in one play (tests/fleet/run.py, docs/fleet.md): FLEET_HOSTS podman containers (default 20) reached over
# ssh, forks FLEET_FORKS (default 10), the play twice (the second changes nothing); the report (time per task and per
# host, bytes over ssh per task) is printed and kept in FLEET_OUT (default /var/tmp/kvm-storage-fleet)
.PHONY: fleet
fleet: setup
	@bash scripts/test.sh fleet --out $${FLEET_OUT:-/var/tmp/kvm-storage-fleet}

# the molecule scenarios (extensions/molecule/*): podman, a locally built Debian 12 image (scripts/molecule.sh)
molecule: setup
	@bash scripts/test.sh molecule

# the image library against qemu-img and the modules against ansible.builtin.stat (bench/README.md); results in
# bench/results/. BENCH_RUNS=5 for more runs, BENCH_QUICK=1 for a small corpus and one run (proves the code only).
# matplotlib (the chart) is installed into the virtualenv here only: nothing else needs it.
bench: setup
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install -q --disable-pip-version-check matplotlib
	@$(VENV)/bin/python bench/bench.py

# the coverage-guided fuzzers of the image library (tests/fuzz, atheris), one format after the other, niced:
# FUZZ_SECONDS per format (default 300), FUZZ_FORMATS="qcow2 vmdk" (default all); corpus, findings and logs in
# FUZZ_OUT (outside the checkout). Prints executions, coverage and findings per format (docs/testing.md).
FUZZ_SECONDS ?= 300
FUZZ_FORMATS ?=
FUZZ_OUT ?= /var/tmp/kvm-storage-fuzz
fuzz: setup
	@nice -n 10 $(VENV)/bin/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS) --formats "$(FUZZ_FORMATS)" --out $(FUZZ_OUT)

# kill -9 at random moments during the image library's writing operations and judge what is left
# (docs/crash-safety.md): CRASH_KILLS kills in all, shared among the operations, seeded by CRASH_SEED.
CRASH_KILLS ?= 224
CRASH_SEED ?= 15
.PHONY: crash
crash: setup
	@nice -n 10 $(VENV)/bin/python tests/crash/crash_kill.py --kills $(CRASH_KILLS) --seed $(CRASH_SEED)
