# clipfast developer commands. Every target installs what it needs itself.
#   make demo    set up, then load a generated ViT-B/32 with clipfast and with openai/CLIP
#   make test    set up, then run the Rust tests and the Python tests
#   make bench   set up, then run the benchmarks side by side and update the README table
#   make lint    cargo fmt/clippy, ruff, mypy, stubtest

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
# The extension is built in place (python/clipfast/_native*.so) and the package is used from
# python/ directly, so several checkouts can share one virtual environment.
export PYTHONPATH := $(CURDIR)/python
export PYO3_PYTHON := $(abspath $(PY))
RUST_SOURCES := $(shell find rust -name "*.rs" -o -name "*.c") Cargo.toml build.rs
NATIVE := python/clipfast/.native-stamp

.PHONY: setup build-dev demo test test-rust test-python bench lint fmt clean check-clip-retrieval

setup: $(STAMP)

$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

build-dev: $(NATIVE)

$(NATIVE): $(STAMP) $(RUST_SOURCES)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --skip-install -q
	touch $@

demo: build-dev
	$(PY) -m clipfast.demo

test: build-dev
	cargo test --release -q
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: build-dev
	$(PY) benches/run_all.py

lint: build-dev
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest clipfast._native

# clip-retrieval runs unchanged with `clip` aliased to clipfast, and reads `clipfast embed`'s output
# (not in CI: clip-retrieval pins numpy<2, pyarrow<16, open_clip<3, so it has a venv of its own).
CR_VENV ?= $(HOME)/.cache/clipfast/venv-clip-retrieval
check-clip-retrieval: build-dev
	test -x $(CR_VENV)/bin/python || bash scripts/clip_retrieval_venv.sh $(CR_VENV)
	$(CR_VENV)/bin/python scripts/clip_retrieval_check.py

fmt:
	cargo fmt
	$(VENV)/bin/ruff format python tests benches
	$(VENV)/bin/ruff check --fix python tests benches

clean:
	cargo clean
	rm -f python/clipfast/_native*.so $(NATIVE)
