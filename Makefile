# clipfast developer commands. Every target installs what it needs itself.
#   make demo    set up, then load a generated ViT-B/32 with clipfast and with openai/CLIP
#   make test    set up, then run the Rust tests and the Python tests
#   make bench   set up, then run the benchmarks side by side and update the README table
#   make lint    cargo fmt/clippy, ruff, mypy, stubtest
#   make dist    the manylinux abi3 wheel and the sdist in dist/, checked (contents, tags, the sdist builds)
#   make compat  the compat subset of the tests on the oldest and newest supported Python/torch/Pillow/numpy
#   make fuzz    set up, then run every fuzz target (budget + plateau rule), the differential
#                targets and the slow sweeps; keeps the minimised corpora (see fuzz/run.py)

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
# The extension is built in place (python/clipfast/_native*.so) and the package is used from
# python/ directly, so several checkouts can share one virtual environment.
export PYTHONPATH := $(CURDIR)/python
export PYO3_PYTHON := $(abspath $(PY))
RUST_SOURCES := $(shell find rust -name "*.rs" -o -name "*.c") Cargo.toml Cargo.lock build.rs
PACKAGE_FILES := $(shell find python/clipfast -type f ! -path "*/__pycache__/*" ! -name "*.so" ! -name ".native-stamp")
NATIVE := python/clipfast/.native-stamp
# The wheel users install: abi3 (CPython >= 3.9), linked by zig's cc against glibc 2.17 symbols so that
# it is manylinux_2_17 (a plain build links this host's glibc 2.34). Its extension is also the one the
# tests import in place (scripts/install_native.py), so one compilation serves the wheel and the suite.
WHEEL_DIR := target/wheel
WHEEL := $(WHEEL_DIR)/.stamp
ZIG_DIR = $$($(PY) -c "import os, ziglang; print(os.path.dirname(ziglang.__file__))")

.PHONY: setup build-dev demo test test-rust test-python bench lint fmt clean check-clip-retrieval dist compat fuzz

setup: $(STAMP)

$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

build-dev: $(NATIVE)

$(WHEEL): $(STAMP) $(RUST_SOURCES) pyproject.toml README.md LICENSE $(PACKAGE_FILES)
	rm -rf $(WHEEL_DIR)
	PATH="$(ZIG_DIR):$$PATH" $(VENV)/bin/maturin build --release --zig --compatibility manylinux_2_17 \
		--out $(WHEEL_DIR) -q
	touch $@

$(NATIVE): $(WHEEL)
	$(PY) scripts/install_native.py $(WHEEL_DIR) python/clipfast
	touch $@

demo: build-dev
	$(PY) -m clipfast.demo

# CLIPFAST_WHEEL: tests/test_wheel.py installs this wheel in a fresh environment without Rust.
test: build-dev
	cargo test --release -q
	CLIPFAST_WHEEL="$$(ls $(WHEEL_DIR)/*.whl)" $(PY) -m pytest -q -p no:cacheprovider tests

bench: build-dev
	$(PY) benches/run_all.py

fuzz: build-dev
	nice $(PY) fuzz/run.py $(FUZZ_ARGS)

lint: build-dev
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches scripts fuzz
	$(VENV)/bin/ruff format --check python tests benches scripts fuzz
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
	$(VENV)/bin/ruff format python tests benches scripts fuzz
	$(VENV)/bin/ruff check --fix python tests benches scripts fuzz

# dist/: the wheel and the sdist; tests/test_wheel.py checks both (CLIPFAST_SDIST: also build a wheel
# from the sdist with the plain toolchain, in target/sdist-check so that repeated runs reuse it).
dist: build-dev
	rm -rf dist
	mkdir -p dist
	cp $(WHEEL_DIR)/*.whl dist/
	$(VENV)/bin/maturin sdist --out dist
	CLIPFAST_WHEEL="$$(ls dist/*.whl)" CLIPFAST_SDIST="$$(ls dist/*.tar.gz)" \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_wheel.py
	ls -l dist

compat: build-dev
	nice $(PY) scripts/compat.py

clean:
	cargo clean
	rm -rf python/clipfast/_native*.so $(NATIVE) dist
