//! x86_64 AVX2 versions of the 8-bit passes, chosen at run time.
//!
//! They do the scalar reference's arithmetic exactly: every product of a byte and a 22-bit
//! fixed-point weight is formed exactly in 32-bit lanes (`_mm256_madd_epi16` on bytes widened to
//! 16 bits against the weight split into two 16-bit halves, two taps at once: two columns in the
//! horizontal pass of 4-byte pixels, two rows in the vertical pass; `_mm256_mullo_epi32` on
//! widened bytes elsewhere), summed in 32-bit lanes, then shifted and clamped
//! as Pillow does. Pillow-SIMD's 16-bit weights are not used: they round differently. Integer sums
//! do not depend on the order of the terms, so the lanes may regroup them freely.

use super::coeffs::Axis;
use super::resample::Rows;
use std::sync::OnceLock;

/// The instruction sets the passes can run on, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The scalar reference.
    None,
    /// AVX2: `vpmaddwd` then `vpaddd`.
    Avx2,
    /// AVX2 with AVX-VNNI (`vpdpwssd` on 256-bit vectors, VEX-encoded: Intel since Alder Lake and
    /// Sapphire Rapids, AMD since Zen 5).
    AvxVnni,
    /// AVX2 with AVX512-VNNI on 256-bit vectors (EVEX-encoded: Intel since Ice Lake / Cascade
    /// Lake, AMD Zen 4).
    Avx512Vnni,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avx2+avxvnni",
            Level::Avx512Vnni => "avx2+avx512vnni",
        }
    }

    /// Every level this CPU can run (for the tests, which compare each with the reference).
    pub fn available() -> &'static [Level] {
        static LEVELS: OnceLock<Vec<Level>> = OnceLock::new();
        LEVELS.get_or_init(|| {
            let mut levels = vec![Level::None];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    levels.push(Level::Avx2);
                    if std::arch::is_x86_feature_detected!("avxvnni") {
                        levels.push(Level::AvxVnni);
                    }
                    if std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                    {
                        levels.push(Level::Avx512Vnni);
                    }
                }
            }
            levels
        })
    }

    /// The level the passes use: the first VNNI form this CPU has, else AVX2, else none.
    /// `CLIPFAST_SIMD=avx2` keeps to plain AVX2 (to compare, or to check that path).
    pub fn detected() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let levels = Level::available();
            let best = [Level::AvxVnni, Level::Avx512Vnni, Level::Avx2]
                .into_iter()
                .find(|l| levels.contains(l))
                .unwrap_or(Level::None);
            match std::env::var("CLIPFAST_SIMD").as_deref() {
                Ok("avx2") => best.min(Level::Avx2),
                _ => best,
            }
        })
    }

    /// The level to run at when the caller allows SIMD or not.
    pub fn when(simd: bool) -> Level {
        if simd {
            Level::detected()
        } else {
            Level::None
        }
    }
}

/// The best instruction set the passes use on this CPU (see [`Level::name`]).
pub fn level() -> &'static str {
    Level::detected().name()
}

pub(super) fn has_avx2() -> bool {
    Level::detected() >= Level::Avx2
}

/// Returns false when no SIMD version applies (the caller then runs the scalar reference).
/// Reads pixels of `ps` bytes and writes their first `bands` bytes, as the scalar pass does.
pub fn horizontal_u8(src: &Rows<'_>, ps: usize, bands: usize, axis: &Axis, out: &mut [u8]) -> bool {
    horizontal_u8_at(Level::detected(), src, ps, bands, axis, out)
}

/// [`horizontal_u8`] at `level` (one that [`Level::available`] lists).
pub fn horizontal_u8_at(
    level: Level,
    src: &Rows<'_>,
    ps: usize,
    bands: usize,
    axis: &Axis,
    out: &mut [u8],
) -> bool {
    let prepared = Prepared::new(axis, src.col0, ps);
    horizontal_u8_prepared_at(level, src, ps, bands, axis, &prepared, out)
}

/// What the horizontal pass derives from an axis alone (the 4-byte pass's packed weights), made
/// once when many bands of rows go through the same axis.
pub struct Prepared {
    #[cfg(target_arch = "x86_64")]
    packed: Option<avx2::Packed>,
    col0: usize,
}

impl Prepared {
    /// For rows of `ps`-byte pixels whose first pixel is source column `col0`.
    pub fn new(axis: &Axis, col0: usize, ps: usize) -> Prepared {
        #[cfg(target_arch = "x86_64")]
        {
            let packed = if (ps == 4 || ps == 1) && Level::available().len() > 1 {
                avx2::Packed::new(axis, col0)
            } else {
                None
            };
            Prepared { packed, col0 }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (axis, ps);
            Prepared { col0 }
        }
    }
}

/// [`horizontal_u8`] with the axis already prepared (for rows starting at the same column).
pub fn horizontal_u8_prepared(
    src: &Rows<'_>,
    ps: usize,
    bands: usize,
    axis: &Axis,
    prepared: &Prepared,
    out: &mut [u8],
) -> bool {
    horizontal_u8_prepared_at(Level::detected(), src, ps, bands, axis, prepared, out)
}

fn horizontal_u8_prepared_at(
    level: Level,
    src: &Rows<'_>,
    ps: usize,
    bands: usize,
    axis: &Axis,
    prepared: &Prepared,
    out: &mut [u8],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2
        && Level::available().contains(&level)
        && equal_lengths(src)
        && prepared.col0 == src.col0
    {
        macro_rules! pass {
            ($kernels:ident) => {
                match (ps, bands, prepared.packed.as_ref()) {
                    (1, 1, Some(packed)) => {
                        // SAFETY: the level's instruction sets are available (checked above).
                        unsafe { $kernels::horizontal4::<1, 1>(src, axis, packed, out) };
                        return true;
                    }
                    (1, 1, None) => {
                        // SAFETY: AVX2 is available (checked above).
                        unsafe { avx2::horizontal1(src, axis, out) };
                        return true;
                    }
                    (4, 3, Some(packed)) => {
                        // SAFETY: as above.
                        unsafe { $kernels::horizontal4::<4, 3>(src, axis, packed, out) };
                        return true;
                    }
                    (4, 4, Some(packed)) => {
                        // SAFETY: as above.
                        unsafe { $kernels::horizontal4::<4, 4>(src, axis, packed, out) };
                        return true;
                    }
                    _ => {}
                }
            };
        }
        match level {
            Level::AvxVnni => pass!(avx_vnni),
            Level::Avx512Vnni => pass!(avx512_vnni),
            _ => pass!(avx2_madd),
        }
    }
    let _ = (level, src, ps, bands, axis, prepared, out);
    false
}

/// Whether all rows have one length (always, from the pipeline; otherwise the scalar reference
/// runs, which reads each window where it lies).
fn equal_lengths(src: &Rows<'_>) -> bool {
    let len = src.rows.first().map_or(0, |r| r.len());
    src.rows.iter().all(|r| r.len() == len)
}

pub fn vertical_u8(
    src: &Rows<'_>,
    ps: usize,
    axis: &Axis,
    first_col: usize,
    cols: usize,
    out: &mut [u8],
) -> bool {
    vertical_u8_at(Level::detected(), src, ps, axis, first_col, cols, out)
}

/// [`vertical_u8`] at `level` (one that [`Level::available`] lists).
pub fn vertical_u8_at(
    level: Level,
    src: &Rows<'_>,
    ps: usize,
    axis: &Axis,
    first_col: usize,
    cols: usize,
    out: &mut [u8],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 && Level::available().contains(&level) {
        // SAFETY: the level's instruction sets are available (checked just above).
        unsafe {
            match level {
                Level::AvxVnni => avx_vnni::vertical(src, ps, axis, first_col, cols, out),
                Level::Avx512Vnni => avx512_vnni::vertical(src, ps, axis, first_col, cols, out),
                _ => avx2_madd::vertical(src, ps, axis, first_col, cols, out),
            }
        };
        return true;
    }
    let _ = (level, src, ps, axis, first_col, cols, out);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::coeffs::{Axis, PRECISION_BITS};
    use super::super::resample::{clip8, Rows, HALF};
    use std::arch::x86_64::*;

    /// Rows the horizontal pass of 4-byte pixels handles at once: one 32-bit lane each.
    pub(super) const BLOCK: usize = 8;

    /// A weight split as `k = 256 h + l` with `h = k >> 8` and `l = k & 255`, both 16-bit:
    /// against bytes widened to 16 bits, `_mm256_madd_epi16` then forms `p h` and `p l` exactly,
    /// and `256 sum(p h) + sum(p l) = sum(p k)`. `None` when `h` does not fit 16 bits (weights of
    /// 2.0 or more, which no bicubic axis has).
    pub(super) fn split_weight(k: i32) -> Option<(i16, i16)> {
        Some((i16::try_from(k >> 8).ok()?, (k & 255) as i16))
    }

    /// An axis's weights for columns taken two at a time.
    ///
    /// The block buffer pairs columns (0, 1), (2, 3), ... of the window; a slot whose window starts
    /// on an odd column or ends on an even one gets a zero weight for the extra column.
    pub struct Packed {
        /// Per slot: the first column pair and the number of pairs.
        pub(super) first_pair: Vec<usize>,
        pub(super) pairs: Vec<usize>,
        /// Per slot, `stride` 32-bit lanes each: the high (or low) halves of both columns'
        /// weights as two 16-bit values, first column in the low half.
        pub(super) high: Vec<i32>,
        pub(super) low: Vec<i32>,
        pub(super) stride: usize,
    }

    impl Packed {
        /// Weights for rows whose first pixel is source column `col0`; `None` if one does not fit
        /// (the caller then uses another path).
        pub fn new(axis: &Axis, col0: usize) -> Option<Packed> {
            let count = axis.count();
            let stride = axis.ksize / 2 + 1;
            let mut packed = Packed {
                first_pair: Vec::with_capacity(count),
                pairs: Vec::with_capacity(count),
                high: vec![0; count * stride],
                low: vec![0; count * stride],
                stride,
            };
            for slot in 0..count {
                let first = axis.start[slot].checked_sub(col0)?;
                let k = axis.fixed_of(slot);
                let begin = first & !1;
                let pairs = (first + k.len() - begin).div_ceil(2);
                if pairs > stride {
                    return None; // unreachable: a window spans at most ksize + 1 columns
                }
                for (j, &w) in k.iter().enumerate() {
                    let (h, l) = split_weight(w)?;
                    let column = first + j - begin;
                    let at = slot * stride + column / 2;
                    let shift = 16 * (column % 2);
                    packed.high[at] |= i32::from(h as u16) << shift;
                    packed.low[at] |= i32::from(l as u16) << shift;
                }
                packed.first_pair.push(begin / 2);
                packed.pairs.push(pairs);
            }
            Some(packed)
        }
    }

    /// Values of one column pair and band for the eight rows of a block: 8 lanes of two i16.
    pub(super) const PAIR_VECTOR: usize = 16;

    /// Write up to eight slots' [`one_slot`] results to the first `rows` rows of `dst` (rows of
    /// `width` bytes), starting at byte `at`: transposed back to rows, padding bytes dropped.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn store_group<const BANDS: usize>(
        pixels: &[__m256i; BLOCK],
        slots: usize,
        rows: usize,
        width: usize,
        at: usize,
        dst: &mut [u8],
    ) {
        // Row i's eight pixels in 4-byte lanes; for 3 bands, packed into the first 24 bytes.
        let compact = _mm256_setr_epi8(
            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, //
            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
        );
        let join = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7);
        // For 1 band: the first byte of each lane, packed into the first 8 bytes.
        let first_bytes = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let join_first = _mm256_setr_epi32(0, 4, 1, 2, 3, 5, 6, 7);
        let mut lanes = [0u8; 32];
        for (i, mut row) in transpose8x8(*pixels).into_iter().enumerate().take(rows) {
            if BANDS == 3 {
                row = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(row, compact), join);
            } else if BANDS == 1 {
                row =
                    _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(row, first_bytes), join_first);
            }
            let start = i * width + at;
            if start + 32 <= dst.len() && at + 32 <= width {
                // SAFETY: start + 32 <= dst.len() (checked); unaligned stores are allowed. Bytes
                // past this group's slots belong to the next group of this row, written later.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(start) as *mut __m256i, row) };
            } else {
                // SAFETY: lanes is 32 bytes; an unaligned store is allowed.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, row) };
                let n = slots * BANDS;
                if let Some(d) = dst.get_mut(start..start + n) {
                    d.copy_from_slice(&lanes[..n]);
                }
            }
        }
    }

    /// Transpose an 8 x 8 matrix of 32-bit lanes: 32-bit, 64-bit, then 128-bit interleaves.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn transpose8x8(r: [__m256i; 8]) -> [__m256i; 8] {
        let a0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let a1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let a2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let a3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let a4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let a5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let a6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let a7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let b0 = _mm256_unpacklo_epi64(a0, a2);
        let b1 = _mm256_unpackhi_epi64(a0, a2);
        let b2 = _mm256_unpacklo_epi64(a1, a3);
        let b3 = _mm256_unpackhi_epi64(a1, a3);
        let b4 = _mm256_unpacklo_epi64(a4, a6);
        let b5 = _mm256_unpackhi_epi64(a4, a6);
        let b6 = _mm256_unpacklo_epi64(a5, a7);
        let b7 = _mm256_unpackhi_epi64(a5, a7);
        [
            _mm256_permute2x128_si256::<0x20>(b0, b4),
            _mm256_permute2x128_si256::<0x20>(b1, b5),
            _mm256_permute2x128_si256::<0x20>(b2, b6),
            _mm256_permute2x128_si256::<0x20>(b3, b7),
            _mm256_permute2x128_si256::<0x31>(b0, b4),
            _mm256_permute2x128_si256::<0x31>(b1, b5),
            _mm256_permute2x128_si256::<0x31>(b2, b6),
            _mm256_permute2x128_si256::<0x31>(b3, b7),
        ]
    }

    /// Shift, clamp and interleave the band sums of eight rows: bytes `4i..4i + 4` of the result are
    /// row i's pixel (bands past `acc.len()` are zero).
    #[target_feature(enable = "avx2")]
    pub(super) fn rows_of_pixels(acc: &[__m256i]) -> __m256i {
        let band = |b: usize| {
            acc.get(b).map_or(_mm256_setzero_si256(), |&a| {
                _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a)
            })
        };
        // Per 128-bit lane (rows 0-3, then rows 4-7): bytes [b0 r0..r3, b1 r0..r3, b2 .., b3 ..].
        let bytes = _mm256_packus_epi16(
            _mm256_packs_epi32(band(0), band(1)),
            _mm256_packs_epi32(band(2), band(3)),
        );
        // 4 x 4 byte transpose within each lane: [r0 b0..b3, r1 b0..b3, ...].
        let order = _mm256_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, //
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
        );
        _mm256_shuffle_epi8(bytes, order)
    }

    /// Fill `t` for one block: vector `m * BANDS + b` (16 i16 values) holds band b of columns
    /// 2m and 2m + 1 of `block[i]` at values 2i and 2i + 1; every row holds `cols` 4-byte pixels
    /// (a last odd column pairs with zeros; lanes of rows past the block's end are left as they
    /// are: their sums are never stored). Whole 8 x 8 tiles of pixels go through registers.
    #[target_feature(enable = "avx2")]
    pub(super) fn transpose_block<const BANDS: usize>(block: &[&[u8]], cols: usize, t: &mut [i16]) {
        let tiles = if block.len() == BLOCK && block.iter().all(|r| r.len() >= cols * 4) {
            cols / BLOCK
        } else {
            0
        };
        // Per 128-bit lane (4 pixels): the 16-bit units (band b of pixels 0 and 1) for b = 0..4,
        // then the same of pixels 2 and 3.
        let gather = _mm256_setr_epi8(
            0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15, //
            0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15,
        );
        for tile in 0..tiles {
            let c = tile * BLOCK;
            // Pairs c/2 .. c/2 + 4, all bands.
            if (c / 2 + 4) * BANDS * PAIR_VECTOR > t.len() {
                break;
            }
            // SAFETY: every row holds cols * 4 >= (c + 8) * 4 bytes and t holds the 4 pairs'
            // vectors (both checked above); unaligned loads and stores are allowed.
            unsafe {
                let r: [__m256i; 8] = std::array::from_fn(|i| {
                    let row = _mm256_loadu_si256(block[i].as_ptr().add(c * 4) as *const __m256i);
                    _mm256_shuffle_epi8(row, gather)
                });
                // 8 x 8 transpose of 16-bit units within each 128-bit lane: unit u of every row.
                let a0 = _mm256_unpacklo_epi16(r[0], r[1]);
                let a1 = _mm256_unpackhi_epi16(r[0], r[1]);
                let a2 = _mm256_unpacklo_epi16(r[2], r[3]);
                let a3 = _mm256_unpackhi_epi16(r[2], r[3]);
                let a4 = _mm256_unpacklo_epi16(r[4], r[5]);
                let a5 = _mm256_unpackhi_epi16(r[4], r[5]);
                let a6 = _mm256_unpacklo_epi16(r[6], r[7]);
                let a7 = _mm256_unpackhi_epi16(r[6], r[7]);
                let b0 = _mm256_unpacklo_epi32(a0, a2);
                let b1 = _mm256_unpackhi_epi32(a0, a2);
                let b2 = _mm256_unpacklo_epi32(a1, a3);
                let b3 = _mm256_unpackhi_epi32(a1, a3);
                let b4 = _mm256_unpacklo_epi32(a4, a6);
                let b5 = _mm256_unpackhi_epi32(a4, a6);
                let b6 = _mm256_unpacklo_epi32(a5, a7);
                let b7 = _mm256_unpackhi_epi32(a5, a7);
                // units[u]: lane 0 = unit u of pixels 0-3, lane 1 = of pixels 4-7, rows 0..8.
                let units = [
                    _mm256_unpacklo_epi64(b0, b4),
                    _mm256_unpackhi_epi64(b0, b4),
                    _mm256_unpacklo_epi64(b1, b5),
                    _mm256_unpackhi_epi64(b1, b5),
                    _mm256_unpacklo_epi64(b2, b6),
                    _mm256_unpackhi_epi64(b2, b6),
                    _mm256_unpacklo_epi64(b3, b7),
                    _mm256_unpackhi_epi64(b3, b7),
                ];
                let base = t.as_mut_ptr().add(c / 2 * BANDS * PAIR_VECTOR);
                for half in 0..2 {
                    // Unit 4 * half + b is band b of pair `half` of each 4-pixel lane.
                    for b in 0..BANDS {
                        let v = units[4 * half + b];
                        let lanes = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
                        for (lane, bytes) in lanes.into_iter().enumerate() {
                            let pair = 2 * lane + half;
                            let at = base.add((pair * BANDS + b) * PAIR_VECTOR);
                            _mm256_storeu_si256(at as *mut __m256i, _mm256_cvtepu8_epi16(bytes));
                        }
                    }
                }
            }
        }
        for c in tiles * BLOCK..cols {
            for (i, row) in block.iter().enumerate().take(BLOCK) {
                let px = &row[c * 4..c * 4 + 4];
                for b in 0..BANDS {
                    t[((c / 2 * BANDS + b) * BLOCK + i) * 2 + c % 2] = i16::from(px[b]);
                }
            }
        }
    }

    /// [`transpose_block`] for 1-byte pixels (one band): vector m holds columns 2m and 2m + 1 of
    /// `block[i]` at values 2i and 2i + 1. Two neighbouring columns are one 16-bit unit of a row,
    /// so whole tiles of 16 columns by 8 rows are an 8 x 8 transpose of 16-bit units, then
    /// widened to 16 bits per value.
    #[target_feature(enable = "avx2")]
    pub(super) fn transpose_block1(block: &[&[u8]], cols: usize, t: &mut [i16]) {
        const TILE: usize = 16;
        let tiles = if block.len() == BLOCK && block.iter().all(|r| r.len() >= cols) {
            cols / TILE
        } else {
            0
        };
        for tile in 0..tiles {
            let c = tile * TILE;
            // Pairs c/2 .. c/2 + 8.
            if (c / 2 + TILE / 2) * PAIR_VECTOR > t.len() {
                break;
            }
            // SAFETY: every row holds cols >= c + 16 bytes and t holds the 8 pairs' vectors (both
            // checked above); unaligned loads and stores are allowed.
            unsafe {
                let r: [__m128i; 8] = std::array::from_fn(|i| {
                    _mm_loadu_si128(block[i].as_ptr().add(c) as *const __m128i)
                });
                let a0 = _mm_unpacklo_epi16(r[0], r[1]);
                let a1 = _mm_unpackhi_epi16(r[0], r[1]);
                let a2 = _mm_unpacklo_epi16(r[2], r[3]);
                let a3 = _mm_unpackhi_epi16(r[2], r[3]);
                let a4 = _mm_unpacklo_epi16(r[4], r[5]);
                let a5 = _mm_unpackhi_epi16(r[4], r[5]);
                let a6 = _mm_unpacklo_epi16(r[6], r[7]);
                let a7 = _mm_unpackhi_epi16(r[6], r[7]);
                let b0 = _mm_unpacklo_epi32(a0, a2);
                let b1 = _mm_unpackhi_epi32(a0, a2);
                let b2 = _mm_unpacklo_epi32(a1, a3);
                let b3 = _mm_unpackhi_epi32(a1, a3);
                let b4 = _mm_unpacklo_epi32(a4, a6);
                let b5 = _mm_unpackhi_epi32(a4, a6);
                let b6 = _mm_unpacklo_epi32(a5, a7);
                let b7 = _mm_unpackhi_epi32(a5, a7);
                // units[u]: 16-bit unit u (columns c + 2u, c + 2u + 1) of rows 0..8.
                let units = [
                    _mm_unpacklo_epi64(b0, b4),
                    _mm_unpackhi_epi64(b0, b4),
                    _mm_unpacklo_epi64(b1, b5),
                    _mm_unpackhi_epi64(b1, b5),
                    _mm_unpacklo_epi64(b2, b6),
                    _mm_unpackhi_epi64(b2, b6),
                    _mm_unpacklo_epi64(b3, b7),
                    _mm_unpackhi_epi64(b3, b7),
                ];
                let base = t.as_mut_ptr().add(c / 2 * PAIR_VECTOR);
                for (u, unit) in units.into_iter().enumerate() {
                    let at = base.add(u * PAIR_VECTOR) as *mut __m256i;
                    _mm256_storeu_si256(at, _mm256_cvtepu8_epi16(unit));
                }
            }
        }
        for c in tiles * TILE..cols {
            for (i, row) in block.iter().enumerate().take(BLOCK) {
                t[(c / 2 * BLOCK + i) * 2 + c % 2] = i16::from(row[c]);
            }
        }
    }

    /// The block transpose for pixels of `PS` bytes (1 or 4) with `BANDS` bands.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn transpose_rows<const PS: usize, const BANDS: usize>(
        block: &[&[u8]],
        cols: usize,
        t: &mut [i16],
    ) {
        if PS == 1 {
            transpose_block1(block, cols, t)
        } else {
            transpose_block::<BANDS>(block, cols, t)
        }
    }

    /// Horizontal pass over 1-byte pixels: eight taps per multiply, then a lane sum.
    #[target_feature(enable = "avx2")]
    pub fn horizontal1(src: &Rows<'_>, axis: &Axis, out: &mut [u8]) {
        let count = axis.count();
        for (row, dst) in src.rows.iter().zip(out.chunks_exact_mut(count)) {
            for (slot, d) in dst.iter_mut().enumerate() {
                let k = axis.fixed_of(slot);
                let first = axis.start[slot] - src.col0;
                let window = &row[first..first + k.len()];
                let mut acc = _mm256_setzero_si256();
                let mut octets = window.chunks_exact(8).zip(k.chunks_exact(8));
                for (px, w) in &mut octets {
                    let bytes = u64::from_le_bytes([
                        px[0], px[1], px[2], px[3], px[4], px[5], px[6], px[7],
                    ]);
                    let wide = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64));
                    let weights = _mm256_setr_epi32(w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]);
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(wide, weights));
                }
                let half = _mm_add_epi32(
                    _mm256_castsi256_si128(acc),
                    _mm256_extracti128_si256::<1>(acc),
                );
                let mut lanes = [0i32; 4];
                // SAFETY: lanes is 16 bytes, an unaligned store is allowed.
                unsafe { _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, half) };
                let mut sum = HALF.wrapping_add(lanes.iter().fold(0i32, |a, &b| a.wrapping_add(b)));
                let done = window.len() / 8 * 8;
                for (&p, &w) in window[done..].iter().zip(&k[done..]) {
                    sum = sum.wrapping_add(i32::from(p) * w);
                }
                *d = clip8(sum);
            }
        }
    }

    /// The weights of taps (2j, 2j + 1) as [`split_weight`] halves packed for `_mm256_madd_epi16`
    /// (tap 2j in the low 16 bits; an odd last tap pairs with a zero weight). False if a weight
    /// does not split.
    pub(super) fn split_pairs(k: &[i32], pairs: &mut Vec<(i32, i32)>) -> bool {
        pairs.clear();
        for two in k.chunks(2) {
            let (Some((h0, l0)), Some((h1, l1))) = (
                split_weight(two[0]),
                split_weight(two.get(1).copied().unwrap_or(0)),
            ) else {
                return false;
            };
            let pack = |a: i16, b: i16| i32::from(a as u16) | (i32::from(b as u16) << 16);
            pairs.push((pack(h0, h1), pack(l0, l1)));
        }
        true
    }
}

/// The passes whose inner loops multiply and accumulate, compiled once per instruction set:
/// `dot(acc, a, b)` is `acc + madd(a, b)` (`_mm256_madd_epi16`, then `_mm256_add_epi32`), or the
/// same in one VNNI instruction (`vpdpwssd`: the same exact products and the same wrapping 32-bit
/// sum, so the same bits; one instruction where there were two).
#[cfg(target_arch = "x86_64")]
macro_rules! accumulating_kernels {
    ($name:ident, $features:literal, $dot:expr) => {
        mod $name {
            use super::super::coeffs::{Axis, PRECISION_BITS};
            use super::super::resample::{clip8, Rows, HALF};
            use super::super::scratch::Scratch;
            use super::avx2::{
                rows_of_pixels, split_pairs, store_group, transpose_rows, Packed, BLOCK,
                PAIR_VECTOR,
            };
            use std::arch::x86_64::*;

            /// `acc + madd(a, b)` in 32-bit lanes (see the macro's comment).
            #[target_feature(enable = $features)]
            #[inline]
            fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
                #[allow(unused_imports)]
                use super::vnni;
                $dot(acc, a, b)
            }

            /// Horizontal pass over pixels of `PS` bytes (4, or 1 for L), as a vertical pass over
            /// transposed blocks of rows.
            ///
            /// Eight rows at a time are transposed so that one 32-byte vector holds band b of columns
            /// (2m, 2m + 1) for all eight rows as 16-bit values; two taps are then two
            /// `_mm256_madd_epi16` per band (the high and low halves of the weights, see
            /// [`split_weight`](super::avx2::split_weight)): exact 32-bit products, no widening or lane
            /// sums in the inner loop. The first `BANDS` bytes of each pixel are computed and written;
            /// `out` holds pixels of `BANDS` bytes.
            #[target_feature(enable = $features)]
            pub fn horizontal4<const PS: usize, const BANDS: usize>(
                src: &Rows<'_>,
                axis: &Axis,
                packed: &Packed,
                out: &mut [u8],
            ) {
                let count = axis.count();
                let width = count * BANDS;
                let cols = src.rows.first().map_or(0, |r| r.len() / PS);
                let len = cols.div_ceil(2) * BANDS * PAIR_VECTOR;
                // Zeroed: a last odd column pairs with zeros (see `transpose_block`). On 32-byte
                // boundaries: every vector is then one cache line's (Vec's 16-byte alignment
                // split half the loads in two; aligned, RGB photos of 1000-1400 px took 7-10% less).
                let (mut s, at) = Scratch::<i16>::zeroed_aligned(len, 32);
                let (mut s2, at2) = Scratch::<i16>::zeroed_aligned(len, 32);
                let (t, t2) = (&mut s[at..at + len], &mut s2[at2..at2 + len]);
                // Sixteen rows per step, as two blocks of eight: each weight broadcast serves both, and
                // the per-slot bookkeeping is shared (about 20% faster on photos than one block a step).
                for (block, dst) in src
                    .rows
                    .chunks(2 * BLOCK)
                    .zip(out.chunks_mut(width * 2 * BLOCK))
                {
                    let (first, second) = block.split_at(block.len().min(BLOCK));
                    let (dst, dst2) = dst.split_at_mut(dst.len().min(width * BLOCK));
                    transpose_rows::<PS, BANDS>(first, cols, t);
                    let rows = first.len().min(dst.len() / width.max(1));
                    if second.is_empty() {
                        by_groups::<BANDS, 1>(packed, count, width, [&*t], [dst], [rows]);
                    } else {
                        transpose_rows::<PS, BANDS>(second, cols, t2);
                        let rows2 = second.len().min(dst2.len() / width.max(1));
                        by_groups::<BANDS, 2>(packed, count, width, [&*t, &*t2], [dst, dst2], [rows, rows2]);
                    }
                }
            }

            /// All output slots, eight at a time, for the `N` transposed blocks in `ts`: block n's
            /// `rows[n]` rows go to `dsts[n]` (rows of `width` bytes).
            #[target_feature(enable = $features)]
            #[inline]
            fn by_groups<const BANDS: usize, const N: usize>(
                packed: &Packed,
                count: usize,
                width: usize,
                ts: [&[i16]; N],
                mut dsts: [&mut [u8]; N],
                rows: [usize; N],
            ) {
                for group in (0..count).step_by(BLOCK) {
                    let slots = (count - group).min(BLOCK);
                    let mut pixels = [[_mm256_setzero_si256(); BLOCK]; N];
                    for j in 0..slots {
                        let slot = one_slot::<BANDS, N>(packed, group + j, ts);
                        for (px, value) in pixels.iter_mut().zip(slot) {
                            px[j] = value;
                        }
                    }
                    for ((px, dst), &rows) in pixels.iter().zip(dsts.iter_mut()).zip(&rows) {
                        store_group::<BANDS>(px, slots, rows, width, group * BANDS, dst);
                    }
                }
            }

            /// The pixels of output `slot` for the eight rows of each of the `N` blocks in `ts` (transposed
            /// alike): bytes `4i..4i + 4` of result `n` are row i's of block n (see [`rows_of_pixels`]).
            /// With two blocks, each weight broadcast serves sixteen rows.
            #[target_feature(enable = $features)]
            #[inline]
            fn one_slot<const BANDS: usize, const N: usize>(
                packed: &Packed,
                slot: usize,
                ts: [&[i16]; N],
            ) -> [__m256i; N] {
                let first = packed.first_pair[slot];
                let pairs = packed.pairs[slot];
                let weights = slot * packed.stride..slot * packed.stride + pairs;
                let (high, low) = (&packed.high[weights.clone()], &packed.low[weights]);
                let mut acc_high = [[_mm256_setzero_si256(); BANDS]; N];
                let mut acc_low = [[_mm256_set1_epi32(HALF); BANDS]; N];
                if ts
                    .iter()
                    .any(|t| (first + pairs) * BANDS * PAIR_VECTOR > t.len())
                {
                    return [_mm256_setzero_si256(); N]; // unreachable: windows lie inside the rows
                }
                // SAFETY: (first + pairs) * BANDS * 16 <= the length of every t (checked above), so all
                // BANDS vectors of every pair first..first + pairs are inside each; unaligned loads are
                // allowed.
                let mut vectors = ts.map(|t| unsafe { t.as_ptr().add(first * BANDS * PAIR_VECTOR) });
                for (&h, &l) in high.iter().zip(low) {
                    let (h, l) = (_mm256_set1_epi32(h), _mm256_set1_epi32(l));
                    for n in 0..N {
                        for b in 0..BANDS {
                            // SAFETY: see above.
                            let v = unsafe {
                                _mm256_loadu_si256(vectors[n].add(b * PAIR_VECTOR) as *const __m256i)
                            };
                            acc_high[n][b] = dot(acc_high[n][b], v, h);
                            acc_low[n][b] = dot(acc_low[n][b], v, l);
                        }
                    }
                    // SAFETY: at most one past the last pair read (see above).
                    vectors = vectors.map(|p| unsafe { p.add(BANDS * PAIR_VECTOR) });
                }
                std::array::from_fn(|n| {
                    let sums: [__m256i; BANDS] = std::array::from_fn(|b| {
                        _mm256_add_epi32(_mm256_slli_epi32::<8>(acc_high[n][b]), acc_low[n][b])
                    });
                    rows_of_pixels(&sums)
                })
            }

            /// Vertical pass over two rows at a time, 32 bytes per step: the rows' bytes interleaved and
            /// widened to 16 bits meet both taps' weight halves in one `_mm256_madd_epi16` each (exact
            /// 32-bit products, as in the horizontal pass). Returns how many bytes of `dst` it wrote (whole
            /// 32-byte steps; the caller finishes the row).
            #[target_feature(enable = $features)]
            fn vertical_pairs(taps: &[&[u8]], pairs: &[(i32, i32)], dst: &mut [u8]) -> usize {
                let width = dst.len();
                if taps.is_empty()
                    || taps.iter().any(|t| t.len() != width)
                    || pairs.len() != taps.len().div_ceil(2)
                {
                    return 0; // unreachable: the caller passes rows of the destination's width
                }
                let zero = _mm256_setzero_si256();
                let half = _mm256_set1_epi32(HALF);
                let mut x = 0;
                while x + 32 <= width {
                    let mut acc_high = [zero; 4];
                    let mut acc_low = [zero; 4];
                    for (j, &(h, l)) in pairs.iter().enumerate() {
                        let first = taps[2 * j];
                        // An odd last tap pairs with any row: its weight is 0.
                        let second = taps.get(2 * j + 1).copied().unwrap_or(first);
                        // SAFETY: x + 32 <= width == the length of both rows (checked above);
                        // unaligned loads are allowed.
                        let (a, b) = unsafe {
                            (
                                _mm256_loadu_si256(first.as_ptr().add(x) as *const __m256i),
                                _mm256_loadu_si256(second.as_ptr().add(x) as *const __m256i),
                            )
                        };
                        let (lo, hi) = (_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b));
                        // Per 128-bit lane, bytes 0-3, 4-7, 8-11, 12-15 of that lane as (a, b) pairs.
                        let parts = [
                            _mm256_unpacklo_epi8(lo, zero),
                            _mm256_unpackhi_epi8(lo, zero),
                            _mm256_unpacklo_epi8(hi, zero),
                            _mm256_unpackhi_epi8(hi, zero),
                        ];
                        let (h, l) = (_mm256_set1_epi32(h), _mm256_set1_epi32(l));
                        for (i, part) in parts.into_iter().enumerate() {
                            acc_high[i] = dot(acc_high[i], part, h);
                            acc_low[i] = dot(acc_low[i], part, l);
                        }
                    }
                    let sums: [__m256i; 4] = std::array::from_fn(|i| {
                        let total = _mm256_add_epi32(_mm256_slli_epi32::<8>(acc_high[i]), acc_low[i]);
                        _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm256_add_epi32(total, half))
                    });
                    // Saturating packs within lanes put the bytes back in order (see `parts`).
                    let bytes = _mm256_packus_epi16(
                        _mm256_packs_epi32(sums[0], sums[1]),
                        _mm256_packs_epi32(sums[2], sums[3]),
                    );
                    // SAFETY: x + 32 <= width == dst.len(); an unaligned store is allowed.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(x) as *mut __m256i, bytes) };
                    x += 32;
                }
                x
            }

            /// Vertical pass: 32 bytes of a row per step, each widened to 32-bit lanes.
            #[target_feature(enable = $features)]
            pub fn vertical(
                src: &Rows<'_>,
                ps: usize,
                axis: &Axis,
                first_col: usize,
                cols: usize,
                out: &mut [u8],
            ) {
                let width = cols * ps;
                let offset = first_col * ps;
                let mut pairs: Vec<(i32, i32)> = Vec::with_capacity(axis.ksize / 2 + 1);
                for (slot, dst) in out.chunks_exact_mut(width).enumerate() {
                    let k = axis.fixed_of(slot);
                    let base = axis.start[slot] - src.row0;
                    let taps: Vec<&[u8]> = (0..k.len())
                        .map(|i| &src.rows[base + i][offset..offset + width])
                        .collect();
                    let mut x = 0;
                    if split_pairs(k, &mut pairs) {
                        x = vertical_pairs(&taps, &pairs, dst);
                    }
                    while x + 32 <= width {
                        // sum(row_j[x..x + 32] * k_j) + HALF >> 22, clamped to bytes lane by lane: the
                        // scalar reference's arithmetic on 32 bytes at once.
                        let mut acc = [_mm256_set1_epi32(HALF); 4];
                        for (row, &w) in taps.iter().zip(k) {
                            let weight = _mm256_set1_epi32(w);
                            // SAFETY: x + 32 <= width == row.len(); unaligned loads are allowed.
                            let bytes =
                                unsafe { _mm256_loadu_si256(row.as_ptr().add(x) as *const __m256i) };
                            let lo = _mm256_castsi256_si128(bytes);
                            let hi = _mm256_extracti128_si256::<1>(bytes);
                            let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
                            for (a, part) in acc.iter_mut().zip(parts) {
                                *a = _mm256_add_epi32(
                                    *a,
                                    _mm256_mullo_epi32(_mm256_cvtepu8_epi32(part), weight),
                                );
                            }
                        }
                        for a in &mut acc {
                            *a = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(*a);
                        }
                        // packs works within 128-bit lanes; the permutes restore the byte order.
                        let w01 =
                            _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(acc[0], acc[1]));
                        let w23 =
                            _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(acc[2], acc[3]));
                        let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(w01, w23));
                        // SAFETY: x + 32 <= width == dst.len(); an unaligned store is allowed.
                        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(x) as *mut __m256i, sums) };
                        x += 32;
                    }
                    for (i, d) in dst.iter_mut().enumerate().skip(x) {
                        let mut sum = HALF;
                        for (row, &w) in taps.iter().zip(k) {
                            sum = sum.wrapping_add(i32::from(row[i]) * w);
                        }
                        *d = clip8(sum);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
accumulating_kernels!(avx2_madd, "avx2", |acc, a, b| _mm256_add_epi32(
    acc,
    _mm256_madd_epi16(a, b)
));
#[cfg(target_arch = "x86_64")]
accumulating_kernels!(avx_vnni, "avx2,avxvnni", vnni::dpwssd_vex);
#[cfg(target_arch = "x86_64")]
accumulating_kernels!(
    avx512_vnni,
    "avx2,avx512f,avx512vl,avx512vnni",
    vnni::dpwssd_evex
);

/// `vpdpwssd` on 256-bit vectors, written as assembly (one instruction; the crate needs Rust 1.89
/// for these target features anyway, whose intrinsics came in the same release). The VEX form is
/// AVX-VNNI's, the EVEX form AVX512-VNNI's (with AVX512VL).
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::asm;
    use std::arch::x86_64::__m256i;

    /// `acc + madd(a, b)` in one instruction (AVX-VNNI).
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    pub fn dpwssd_vex(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        let mut acc = acc;
        // SAFETY: a register-only instruction of a feature this function requires.
        unsafe {
            asm!(
                "{{vex}} vpdpwssd {acc}, {a}, {b}",
                acc = inout(ymm_reg) acc,
                a = in(ymm_reg) a,
                b = in(ymm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        acc
    }

    /// `acc + madd(a, b)` in one instruction (AVX512-VNNI with AVX512VL).
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    pub fn dpwssd_evex(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        let mut acc = acc;
        // SAFETY: a register-only instruction of features this function requires.
        unsafe {
            asm!(
                "vpdpwssd {acc}, {a}, {b}",
                acc = inout(ymm_reg) acc,
                a = in(ymm_reg) a,
                b = in(ymm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::super::coeffs::Axis;
    use super::super::resample::{horizontal_u8 as h, vertical_u8 as v, Rows};
    use super::{horizontal_u8_at, vertical_u8_at, Level};

    /// The SIMD levels this CPU has (each is compared with the scalar reference).
    fn simd_levels() -> &'static [Level] {
        let levels = &Level::available()[1..];
        if levels.is_empty() {
            eprintln!("no SIMD level on this CPU: only the scalar reference is tested");
        }
        levels
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Mostly extremes: they push the sums to the clamping limits.
                match (x >> 60) % 4 {
                    0 => 0,
                    1 => 255,
                    _ => (x >> 33) as u8,
                }
            })
            .collect()
    }

    /// What `_mm256_madd_epi16` computes for one 32-bit lane of each operand.
    #[cfg(target_arch = "x86_64")]
    fn madd_lane(a: i32, b: i32) -> i32 {
        let lo = |x: i32| i32::from(x as u16 as i16);
        let hi = |x: i32| i32::from((x >> 16) as i16);
        lo(a) * lo(b) + hi(a) * hi(b)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn split_weights_multiply_exactly() {
        use super::avx2::split_weight;
        let one = 1i32 << 22;
        let ks = (-one..2 * one).step_by(997).chain([
            -2 * one,
            -1,
            0,
            1,
            255,
            256,
            one - 1,
            one,
            2 * one - 1,
        ]);
        let pack = |a: i16, b: i16| i32::from(a as u16) | (i32::from(b as u16) << 16);
        for k in ks {
            let (h, l) = split_weight(k).expect("weights in [-2, 2) fit");
            for p in 0..=255i32 {
                // Two columns at once, as the kernel pairs them: p and 255 - p.
                let pixels = p | ((255 - p) << 16);
                let total = 256 * madd_lane(pixels, pack(h, h)) + madd_lane(pixels, pack(l, l));
                assert_eq!(total, 255 * k, "p={p} k={k}");
                let alone = 256 * madd_lane(p, pack(h, 0)) + madd_lane(p, pack(l, 0));
                assert_eq!(alone, p * k, "p={p} k={k}");
            }
        }
        assert!(split_weight(2 * one).is_none());
        assert!(split_weight(-2 * one - 1).is_none());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn weights_of_downscales_and_upscales_fit_the_packed_form() {
        // Upscales give weights of 1.0 (32 -> 224) and above (1.12 at the edges of 2 -> 448).
        for in_size in (1..700).chain([1024, 3000, 4000, 5000]) {
            for out_size in [224, 288, 298, 336, 448] {
                let axis = Axis::bicubic(in_size, out_size, 0..out_size);
                assert!(
                    super::avx2::Packed::new(&axis, 0).is_some(),
                    "{in_size} -> {out_size}"
                );
            }
        }
    }

    #[test]
    fn simd_passes_equal_scalar_reference() {
        for (w, hgt, ow, oh, seed) in [
            (97, 41, 33, 17, 1),
            (640, 9, 224, 5, 2),
            (5, 300, 224, 77, 3),
            (3, 3, 50, 60, 4),
            (531, 23, 229, 11, 5),
            (40, 7, 41, 29, 6), // vertical upscale, rows of 40+ bytes: the row-pair path
            (64, 500, 63, 3, 7), // 300+ taps per output row
            (33, 64, 30, 64, 8), // same height: one tap of weight 1.0
        ] {
            for ps in [1usize, 2, 3, 4] {
                let data = noise(w * hgt * ps, seed + ps as u64);
                let rows = Rows {
                    rows: data.chunks_exact(w * ps).collect(),
                    row0: 0,
                    col0: 0,
                };
                let ha = Axis::bicubic(w, ow, 0..ow);
                for &level in simd_levels() {
                    for bands in if ps == 4 { vec![3, 4] } else { vec![ps] } {
                        let mut a = vec![0u8; hgt * ow * bands];
                        let mut b = a.clone();
                        if !horizontal_u8_at(level, &rows, ps, bands, &ha, &mut a) {
                            assert!(!matches!(ps, 1 | 4), "no SIMD pass for {ps}-byte pixels");
                            continue; // 2- and 3-byte pixels run the scalar reference
                        }
                        h(&rows, ps, bands, &ha, &mut b, false);
                        assert_eq!(a, b, "{level:?} horizontal ps={ps}/{bands} {w}x{hgt}->{ow}");
                    }
                    let va = Axis::bicubic(hgt, oh, 0..oh);
                    let mut c = vec![0u8; oh * w * ps];
                    let mut d = c.clone();
                    assert!(vertical_u8_at(level, &rows, ps, &va, 0, w, &mut c));
                    v(&rows, ps, &va, 0, w, &mut d, false);
                    assert_eq!(c, d, "{level:?} vertical ps={ps} {w}x{hgt}->{oh}");
                }
            }
        }
    }

    #[test]
    fn simd_horizontal_equals_scalar_on_cropped_windows() {
        // What the pipeline passes: rows that start at the window's first column, any row count.
        for (w, rows_n, ow, kept, seed) in [
            (600, 17, 336, 56..280, 7),
            (4000, 9, 298, 37..261, 8),
            (1023, 16, 298, 37..261, 9),
            (333, 8, 301, 0..301, 10),
            (101, 24, 224, 0..224, 11),
        ] {
            for ps in [1usize, 4] {
                let data = noise(w * rows_n * ps, seed);
                let axis = Axis::bicubic(w, ow, kept.clone());
                let span = axis.span();
                let rows = Rows {
                    rows: data
                        .chunks_exact(w * ps)
                        .map(|r| &r[span.start * ps..span.end * ps])
                        .collect(),
                    row0: 0,
                    col0: span.start,
                };
                for &level in simd_levels() {
                    for bands in if ps == 4 { vec![3, 4] } else { vec![1] } {
                        let mut a = vec![0u8; rows_n * axis.count() * bands];
                        let mut b = a.clone();
                        assert!(horizontal_u8_at(level, &rows, ps, bands, &axis, &mut a));
                        h(&rows, ps, bands, &axis, &mut b, false);
                        assert_eq!(a, b, "{level:?} {w} -> {ow}, {rows_n} rows, {ps}/{bands}");
                    }
                }
            }
        }
    }
}
