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
    if has_avx2() && (ps == 4 || ps == 1) {
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

    /// Four 32-bit sums (+ rounding bias) -> four clamped bytes, as `clip8` does per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn finish4(sum: __m128i) -> u32 {
        let v =
            _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm_add_epi32(sum, _mm_set1_epi32(HALF)));
        let v16 = _mm_packs_epi32(v, v);
        _mm_cvtsi128_si32(_mm_packus_epi16(v16, v16)) as u32
    }

    /// Bits of the low half when a 22-bit weight is split into two 16-bit halves.
    const SPLIT: i32 = 11;

    /// Horizontal pass over 4-byte pixels, four taps per step, two rows per weight load.
    ///
    /// `_mm256_madd_epi16` multiplies 16-bit values, so each weight is split exactly into
    /// `hi * 2^11 + lo` (lo in 0..2048, |hi| < 2^12): `sum(p * k) = (sum(p * hi) << 11) + sum(p * lo)`
    /// in wrapping 32-bit arithmetic equals the scalar reference's sum whenever that fits in 32 bits,
    /// which Pillow's own arithmetic already requires. Taps past a window get weight 0.
    #[target_feature(enable = "avx2")]
    pub fn horizontal4(src: &Rows<'_>, axis: &Axis, out: &mut [u8]) {
        let count = axis.count();
        let groups = axis.ksize.div_ceil(4);
        // Per slot and group of four taps: 16 words (k0 k1) x4 | (k2 k3) x4, for lo and for hi.
        let mut lo = vec![0i16; count * groups * 16];
        let mut hi = vec![0i16; count * groups * 16];
        for slot in 0..count {
            for (j, &k) in axis.fixed_of(slot).iter().enumerate() {
                let base = (slot * groups + j / 4) * 16 + (j % 4 / 2) * 8 + j % 2;
                for c in 0..4 {
                    lo[base + 2 * c] = (k & ((1 << SPLIT) - 1)) as i16;
                    hi[base + 2 * c] = (k >> SPLIT) as i16;
                }
            }
        }
        // Bytes p0 p1 p2 p3 (RGBA each) -> p0r p1r p0g p1g p0b p1b p0a p1a | p2r p3r ...
        let order = _mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
        let width = count * 4;
        let row_len = src.rows.first().map_or(0, |r| r.len());
        let mut rows = src.rows.chunks_exact(2);
        let mut dsts = out.chunks_exact_mut(width);
        for pair in &mut rows {
            let (Some(d0), Some(d1)) = (dsts.next(), dsts.next()) else {
                break;
            };
            let (r0, r1) = (pair[0], pair[1]);
            if r0.len() != row_len || r1.len() != row_len {
                horizontal4_rows(pair, src.col0, axis, d0, d1);
                continue;
            }
            for slot in 0..count {
                let taps = axis.len[slot];
                let first = (axis.start[slot] - src.col0) * 4;
                let steps = taps.div_ceil(4);
                if first + steps * 16 > row_len {
                    // The zero-weight padding would read past the row: take the exact slow path.
                    let k = axis.fixed_of(slot);
                    d0[slot * 4..slot * 4 + 4]
                        .copy_from_slice(&one_pixel(&r0[first..first + taps * 4], k).to_le_bytes());
                    d1[slot * 4..slot * 4 + 4]
                        .copy_from_slice(&one_pixel(&r1[first..first + taps * 4], k).to_le_bytes());
                    continue;
                }
                let mut lo0 = _mm256_setzero_si256();
                let mut hi0 = _mm256_setzero_si256();
                let mut lo1 = _mm256_setzero_si256();
                let mut hi1 = _mm256_setzero_si256();
                let wbase = slot * groups * 16;
                for g in 0..steps {
                    // SAFETY: first + 16 * g + 16 <= row_len == r0.len() == r1.len() (checked above);
                    // wbase + 16 * g + 16 <= lo.len() == hi.len() since g < steps <= groups.
                    unsafe {
                        let wl =
                            _mm256_loadu_si256(lo.as_ptr().add(wbase + 16 * g) as *const __m256i);
                        let wh =
                            _mm256_loadu_si256(hi.as_ptr().add(wbase + 16 * g) as *const __m256i);
                        let b0 = _mm_loadu_si128(r0.as_ptr().add(first + 16 * g) as *const __m128i);
                        let b1 = _mm_loadu_si128(r1.as_ptr().add(first + 16 * g) as *const __m128i);
                        let p0 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(b0, order));
                        let p1 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(b1, order));
                        lo0 = _mm256_add_epi32(lo0, _mm256_madd_epi16(p0, wl));
                        hi0 = _mm256_add_epi32(hi0, _mm256_madd_epi16(p0, wh));
                        lo1 = _mm256_add_epi32(lo1, _mm256_madd_epi16(p1, wl));
                        hi1 = _mm256_add_epi32(hi1, _mm256_madd_epi16(p1, wh));
                    }
                }
                let t0 = _mm256_add_epi32(_mm256_slli_epi32::<SPLIT>(hi0), lo0);
                let t1 = _mm256_add_epi32(_mm256_slli_epi32::<SPLIT>(hi1), lo1);
                let s0 = _mm_add_epi32(
                    _mm256_castsi256_si128(t0),
                    _mm256_extracti128_si256::<1>(t0),
                );
                let s1 = _mm_add_epi32(
                    _mm256_castsi256_si128(t1),
                    _mm256_extracti128_si256::<1>(t1),
                );
                d0[slot * 4..slot * 4 + 4].copy_from_slice(&finish4(s0).to_le_bytes());
                d1[slot * 4..slot * 4 + 4].copy_from_slice(&finish4(s1).to_le_bytes());
            }
        }
        // An odd last row goes through the one-pixel path.
        if let ([last], Some(d)) = (rows.remainder(), dsts.next()) {
            for slot in 0..count {
                let k = axis.fixed_of(slot);
                let first = (axis.start[slot] - src.col0) * 4;
                d[slot * 4..slot * 4 + 4].copy_from_slice(
                    &one_pixel(&last[first..first + k.len() * 4], k).to_le_bytes(),
                );
            }
        }
    }

    /// Two rows of unequal length (never from our callers): every pixel through `one_pixel`.
    #[target_feature(enable = "avx2")]
    fn horizontal4_rows(pair: &[&[u8]], col0: usize, axis: &Axis, d0: &mut [u8], d1: &mut [u8]) {
        for slot in 0..axis.count() {
            let k = axis.fixed_of(slot);
            let first = (axis.start[slot] - col0) * 4;
            d0[slot * 4..slot * 4 + 4]
                .copy_from_slice(&one_pixel(&pair[0][first..first + k.len() * 4], k).to_le_bytes());
            d1[slot * 4..slot * 4 + 4]
                .copy_from_slice(&one_pixel(&pair[1][first..first + k.len() * 4], k).to_le_bytes());
        }
    }

    /// One output pixel from its window of 4-byte pixels, one tap per 32-bit multiply.
    #[target_feature(enable = "avx2")]
    fn one_pixel(window: &[u8], k: &[i32]) -> u32 {
        let mut sum = _mm_setzero_si128();
        for (px, &w) in window.chunks_exact(4).zip(k) {
            sum = _mm_add_epi32(sum, _mm_mullo_epi32(pixel4(px), _mm_set1_epi32(w)));
        }
        finish4(sum)
    }

    /// Four bytes widened to four 32-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pixel4(px: &[u8]) -> __m128i {
        let bytes = u32::from_le_bytes([px[0], px[1], px[2], px[3]]);
        _mm_cvtepu8_epi32(_mm_cvtsi32_si128(bytes as i32))
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
        let bias = _mm256_set1_epi32(HALF);
        for (slot, dst) in out.chunks_exact_mut(width).enumerate() {
            let k = axis.fixed_of(slot);
            let base = axis.start[slot] - src.row0;
            let taps: Vec<&[u8]> = (0..k.len())
                .map(|i| &src.rows[base + i][offset..offset + width])
                .collect();
            let mut x = 0;
            while x + 32 <= width {
                let mut acc = [bias; 4];
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
                let mut shifted = acc;
                for a in &mut shifted {
                    *a = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(*a);
                }
                for (half, pair) in shifted.chunks_exact(2).enumerate() {
                    // packs works within 128-bit lanes; the permute restores the order.
                    let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(
                        pair[0], pair[1],
                    ));
                    let bytes = _mm_packus_epi16(
                        _mm256_castsi256_si128(words),
                        _mm256_extracti128_si256::<1>(words),
                    );
                    let at = x + half * 16;
                    // SAFETY: at + 16 <= x + 32 <= width == dst.len().
                    unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(at) as *mut __m128i, bytes) };
                }
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
}
