# Hand-written stubs for the Rust extension module `clipfast._native`.
# Every function the Rust side exports is declared here; `make lint` checks them with mypy's stubtest.

__version__: str

# --- image ---
def resize_crop(
    pixels: bytes | object, width: int, height: int, mode: str, n_px: int, simd: bool = True
) -> bytes:
    """Resize (Pillow-exact bicubic) + centre-crop one image in its own mode; packed n x n bytes.

    ``pixels`` is packed bytes (``Image.tobytes()`` layout) or the capsule of ``Image.getim()``.
    """

def preprocess_into(
    items: list[tuple[bytes | object, int, int, str]],
    n_px: int,
    lut: bytes,
    out_addr: int,
    out_len: int,
    kind: str,
    threads: int = 1,
    simd: bool = True,
    max_pixels: int | None = None,
) -> list[str | None]:
    """Resize, crop, convert and normalise ``items`` (L, LA, RGB, RGBA; mode "jpeg": JPEG bytes
    decoded in Rust) into the tensor at ``out_addr``; one error message (or None) per item."""

def simd_level() -> str:
    """"avx2", "sse4.1" or "none": the SIMD paths this CPU runs."""
