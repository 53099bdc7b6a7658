# Hand-written stubs for the Rust extension module `clipfast._native`.
# Every function the Rust side exports is declared here; `make lint` checks them with mypy's stubtest.

__version__: str
