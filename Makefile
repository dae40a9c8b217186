# lsync developer entry points. `make demo` and `make test` are the two
# commands a fresh machine needs (see README.md).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CARGO   ?= cargo
# Debian's python: the pyenv `python3` on PATH cannot load SQLite extensions.
PYTHON  := /usr/bin/python3
# python3-venv, -pip, -setuptools and -wheel build the wheel (`make wheel`)
# and give its test a fresh venv; binutils' objdump reads the .so's glibc needs.
APT_PKGS := libclang-dev sqlite3 python3-pytest bsdutils \
            python3-venv python3-pip python3-setuptools python3-wheel binutils
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: deps build test lint demo bench soak fuzz wheel

# Install only what is missing, so this works offline once set up.
deps:
	@missing=""; \
	for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

build:
	$(CARGO) build --release --workspace

test: deps build wheel
	$(CARGO) test --release --workspace
	PYTHONDONTWRITEBYTECODE=1 LSYNC_WHEELS=$(WHEELS) $(PYTHON) -m pytest -q -p no:cacheprovider tests/python
	bash tests/shell/run.sh

# The Python package (python/): a wheel that carries the release build's
# (the workspace's: built alone, lsync-ext's dependencies would be built a
# second time with other features)
# liblsync.so, in $(WHEELS). python/ is staged in the target dir with the .so
# beside lsync/__init__.py, so the source tree stays clean; the .so loses its
# debug info there (the release profile's line tables: 26 MB, 3 MB without;
# its symbols stay, for backtraces). The stage is built with
# Debian's setuptools and wheel: no build isolation and no index, so nothing
# is fetched. The platform tag is set in python/setup.py;
# tests/python/test_wheel.py installs the wheel into a fresh venv and checks
# the tag against the glibc symbol versions the .so needs.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
WHEELS     := $(TARGET_DIR)/wheels
WHEEL_SRC  := $(TARGET_DIR)/wheel-src
wheel: deps
	$(CARGO) build --release --workspace
	rm -rf $(WHEEL_SRC) $(WHEELS)/lsync-*.whl
	cp -r python $(WHEEL_SRC)
	strip --strip-debug -o $(WHEEL_SRC)/lsync/liblsync.so $(TARGET_DIR)/release/liblsync.so
	$(PYTHON) -m pip wheel --no-deps --no-build-isolation --no-index --quiet \
	  --wheel-dir $(WHEELS) $(WHEEL_SRC)
	@ls $(WHEELS)/lsync-*.whl

# Every property test with $(SOAK_CASES) cases (default 10,000): the
# convergence properties, the capture property and the wire codec's. Not part
# of `make test`. A failure prints its minimal case; check it in as a
# regression (tests/tests/*.proptest-regressions, or a named test).
SOAK_CASES ?= 10000
soak: deps build
	LSYNC_PROPTEST_CASES=$(SOAK_CASES) PROPTEST_CASES=$(SOAK_CASES) \
	  $(CARGO) test --release -p lsync-wire -- --test-threads 2
	LSYNC_PROPTEST_CASES=$(SOAK_CASES) PROPTEST_CASES=$(SOAK_CASES) \
	  $(CARGO) test --release -p lsync-tests --test prop --test convergence -- --include-ignored --test-threads 2

# Each cargo-fuzz target in fuzz/ for $(FUZZ_SECONDS) seconds (a nightly
# toolchain; cargo-fuzz is installed when missing). Not part of `make test` or
# CI. The targets: changeset_decode (the wire crate's decoder), frame_codec
# (the sidecar's handshake and message reader), apply_sql (`lsync_apply`
# through SQL) and restore_file (`lsync_restore` of a crafted file); the last
# two load the liblsync.so that the fuzz build instruments (fuzz/src/lib.rs).
# New inputs go to fuzz/corpus/TARGET (ignored), starting from the checked-in
# fuzz/seeds/TARGET; a crash is saved in fuzz/artifacts/TARGET: check it in
# as a regression test that runs those exact bytes. The malloc limit makes
# any single allocation above it a crash, so that a lying count is caught
# even when it would fit in memory.
FUZZ_SECONDS ?= 60
FUZZ_MALLOC_MB ?= 256
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $$($(CARGO) +nightly fuzz list); do \
	  mkdir -p corpus/$$t seeds/$$t; \
	  $(CARGO) +nightly fuzz run $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -malloc_limit_mb=$(FUZZ_MALLOC_MB) \
	    -print_final_stats=1; \
	done

# The fuzz crate is outside the workspace (it needs no nightly to lint).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --release -- -D warnings
	cd fuzz && $(CARGO) fmt -- --check && $(CARGO) clippy --all-targets -- -D warnings

# Two replicators on loopback: device A indexes /usr/share, device B tags
# entries, both converge (see `lsync demo --help`).
demo: deps build
	./target/release/lsync demo

bench: build
	./target/release/lsync bench capture --rows 1000000
	./target/release/lsync bench apply --rows 1000000
	./target/release/lsync bench latency
	./target/release/lsync bench propagate --rows 100000
	./target/release/lsync bench initial-sync --rows 1000000
	./target/release/lsync bench initial-sync --rows 1000000 --strategy batch
