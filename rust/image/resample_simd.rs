//! x86_64 AVX2 versions of the 8-bit passes, chosen at run time.
//!
//! They do the scalar reference's arithmetic exactly: each byte widened to 32 bits, multiplied by
//! the same 22-bit fixed-point weight (`_mm256_mullo_epi32`), summed in 32-bit lanes, then shifted
//! and clamped as Pillow does. Pillow-SIMD's 16-bit weights are not used: they round differently.
//! Integer sums do not depend on the order of the terms, so the lanes may regroup them freely.

use super::coeffs::Axis;
use super::resample::Rows;

/// The best instruction set the passes use on this CPU: "avx2" or "none".
pub fn level() -> &'static str {
    if has_avx2() {
        "avx2"
    } else {
        "none"
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

/// Returns false when no SIMD version applies (the caller then runs the scalar reference).
pub fn horizontal_u8(src: &Rows<'_>, ps: usize, axis: &Axis, out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && (ps == 4 || ps == 1) && equal_lengths(src) {
        // SAFETY: AVX2 is available (checked at run time just above).
        unsafe {
            if ps == 4 {
                avx2::horizontal4(src, axis, out)
            } else {
                avx2::horizontal1(src, axis, out)
            }
        };
        return true;
    }
    let _ = (src, ps, axis, out);
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available (checked at run time just above).
        unsafe { avx2::vertical(src, ps, axis, first_col, cols, out) };
        return true;
    }
    let _ = (src, ps, axis, first_col, cols, out);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::coeffs::{Axis, PRECISION_BITS};
    use super::super::resample::{clip8, Rows, HALF};
    use std::arch::x86_64::*;

    /// `sum(chunk_j * k_j) + HALF >> 22` clamped to bytes, lane by lane over 32-byte chunks (the
    /// expression gives the address of tap j's chunk): the scalar reference's arithmetic.
    /// A macro, not a function: it must be inlined into the AVX2 callers, and a function with
    /// `#[target_feature]` cannot be forced inline.
    macro_rules! weighted32 {
        ($k:expr, $j:ident => $chunk:expr) => {{
            let bias = _mm256_set1_epi32(HALF);
            let mut acc = [bias; 4];
            for ($j, &w) in $k.iter().enumerate() {
                let weight = _mm256_set1_epi32(w);
                let chunk: *const u8 = $chunk;
                // SAFETY: the caller guarantees 32 readable bytes at `chunk` for every tap.
                let bytes = unsafe { _mm256_loadu_si256(chunk as *const __m256i) };
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
            let w01 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(acc[0], acc[1]));
            let w23 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(acc[2], acc[3]));
            _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(w01, w23))
        }};
    }

    /// Rows the horizontal pass of 4-byte pixels handles at once: one 32-bit lane each.
    const BLOCK: usize = 8;

    /// Horizontal pass over 4-byte pixels, as a vertical pass over a transposed block of rows.
    ///
    /// Eight rows are interleaved pixel by pixel (bytes `32c..32c + 32` = column c of rows
    /// 0..8), so that each tap is one broadcast weight times 32 contiguous bytes, exactly as in
    /// the vertical pass: no per-output shuffles or lane sums, one multiply per tap and channel.
    #[target_feature(enable = "avx2")]
    pub fn horizontal4(src: &Rows<'_>, axis: &Axis, out: &mut [u8]) {
        let count = axis.count();
        let width = count * 4;
        let cols = src.rows.first().map_or(0, |r| r.len() / 4);
        let mut t = vec![0u8; cols * BLOCK * 4];
        for (block, dst) in src.rows.chunks(BLOCK).zip(out.chunks_mut(width * BLOCK)) {
            transpose(block, cols, &mut t);
            let mut lanes = [0u8; 32];
            for slot in 0..count {
                let k = axis.fixed_of(slot);
                let first = axis.start[slot] - src.col0;
                if (first + k.len()) * 32 > t.len() {
                    continue; // unreachable: windows lie inside the rows
                }
                // SAFETY (of each chunk address): (first + j) * 32 + 32 <= t.len(), checked above.
                let sums = weighted32!(k, j => unsafe { t.as_ptr().add((first + j) * 32) });
                // SAFETY: lanes is 32 bytes; an unaligned store is allowed.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sums) };
                for (i, d) in dst.chunks_exact_mut(width).enumerate() {
                    d[slot * 4..slot * 4 + 4].copy_from_slice(&lanes[i * 4..i * 4 + 4]);
                }
            }
        }
    }

    /// Bytes `(c * 8 + i) * 4..+4` of `t` = pixel c of `block[i]` (rows past the block's end give
    /// zeros); every row holds `cols` 4-byte pixels. Whole 8 x 8 tiles of pixels go through
    /// registers, the rest one by one.
    #[target_feature(enable = "avx2")]
    fn transpose(block: &[&[u8]], cols: usize, t: &mut [u8]) {
        let tiles = if block.len() == BLOCK && block.iter().all(|r| r.len() >= cols * 4) {
            cols / BLOCK
        } else {
            0
        };
        for tile in 0..tiles {
            let c = tile * BLOCK;
            if (c + BLOCK) * BLOCK * 4 > t.len() {
                break;
            }
            // SAFETY: every row holds cols * 4 >= (c + 8) * 4 bytes and t holds (c + 8) * 32
            // bytes (both checked above); unaligned loads and stores are allowed.
            unsafe {
                let r: [__m256i; 8] = std::array::from_fn(|i| {
                    _mm256_loadu_si256(block[i].as_ptr().add(c * 4) as *const __m256i)
                });
                // Classic 8 x 8 transpose of 32-bit lanes: 32-bit, 64-bit, then 128-bit interleaves.
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
                let out = [
                    _mm256_permute2x128_si256::<0x20>(b0, b4),
                    _mm256_permute2x128_si256::<0x20>(b1, b5),
                    _mm256_permute2x128_si256::<0x20>(b2, b6),
                    _mm256_permute2x128_si256::<0x20>(b3, b7),
                    _mm256_permute2x128_si256::<0x31>(b0, b4),
                    _mm256_permute2x128_si256::<0x31>(b1, b5),
                    _mm256_permute2x128_si256::<0x31>(b2, b6),
                    _mm256_permute2x128_si256::<0x31>(b3, b7),
                ];
                for (j, v) in out.iter().enumerate() {
                    _mm256_storeu_si256(t.as_mut_ptr().add((c + j) * 32) as *mut __m256i, *v);
                }
            }
        }
        for c in tiles * BLOCK..cols {
            for i in 0..BLOCK {
                let px = block
                    .get(i)
                    .map_or(&[0u8; 4][..], |row| &row[c * 4..c * 4 + 4]);
                t[(c * BLOCK + i) * 4..(c * BLOCK + i) * 4 + 4].copy_from_slice(px);
            }
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

    /// Vertical pass: 32 bytes of a row per step, each widened to 32-bit lanes.
    #[target_feature(enable = "avx2")]
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
        for (slot, dst) in out.chunks_exact_mut(width).enumerate() {
            let k = axis.fixed_of(slot);
            let base = axis.start[slot] - src.row0;
            let taps: Vec<&[u8]> = (0..k.len())
                .map(|i| &src.rows[base + i][offset..offset + width])
                .collect();
            let mut x = 0;
            while x + 32 <= width {
                // SAFETY (of each chunk address): x + 32 <= width == the length of every tap row.
                let sums = weighted32!(k, j => unsafe { taps[j].as_ptr().add(x) });
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

#[cfg(test)]
mod tests {
    use super::super::coeffs::Axis;
    use super::super::resample::{horizontal_u8 as h, vertical_u8 as v, Rows};

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

    #[test]
    fn simd_passes_equal_scalar_reference() {
        for (w, hgt, ow, oh, seed) in [
            (97, 41, 33, 17, 1),
            (640, 9, 224, 5, 2),
            (5, 300, 224, 77, 3),
            (3, 3, 50, 60, 4),
            (531, 23, 229, 11, 5),
        ] {
            for ps in [1usize, 2, 3, 4] {
                let data = noise(w * hgt * ps, seed + ps as u64);
                let rows = Rows {
                    rows: data.chunks_exact(w * ps).collect(),
                    row0: 0,
                    col0: 0,
                };
                let ha = Axis::bicubic(w, ow, 0..ow);
                let mut a = vec![0u8; hgt * ow * ps];
                let mut b = a.clone();
                h(&rows, ps, &ha, &mut a, true);
                h(&rows, ps, &ha, &mut b, false);
                assert_eq!(a, b, "horizontal ps={ps} {w}x{hgt}->{ow}");
                let va = Axis::bicubic(hgt, oh, 0..oh);
                let mut c = vec![0u8; oh * w * ps];
                let mut d = c.clone();
                v(&rows, ps, &va, 0, w, &mut c, true);
                v(&rows, ps, &va, 0, w, &mut d, false);
                assert_eq!(c, d, "vertical ps={ps} {w}x{hgt}->{oh}");
            }
        }
    }

    #[test]
    fn simd_horizontal_equals_scalar_on_cropped_windows() {
        // What the pipeline passes: rows that start at the window's first column, any row count.
        for (w, rows_n, ow, kept, seed) in [(600, 17, 336, 56..280, 7), (4000, 9, 298, 37..261, 8)]
        {
            let data = noise(w * rows_n * 4, seed);
            let axis = Axis::bicubic(w, ow, kept);
            let span = axis.span();
            let rows = Rows {
                rows: data
                    .chunks_exact(w * 4)
                    .map(|r| &r[span.start * 4..span.end * 4])
                    .collect(),
                row0: 0,
                col0: span.start,
            };
            let mut a = vec![0u8; rows_n * axis.count() * 4];
            let mut b = a.clone();
            h(&rows, 4, &axis, &mut a, true);
            h(&rows, 4, &axis, &mut b, false);
            assert_eq!(a, b, "{w} -> {ow}, {rows_n} rows");
        }
    }
}
