//! ToTensor + Normalize: HWC RGB bytes -> CHW values.
//!
//! With 256 possible inputs per channel, `(x / 255 - mean) / std` in float32 is a table; Python
//! builds it with torch's own ops, so the values are exactly those of torchvision's transforms.
//! For float32 output an AVX2 route computes the same expression eight pixels at a time (IEEE
//! division and subtraction, rounded to float32 after each op, as torch's kernels do); it is used
//! only once it has been checked to give the table's bits for all 3 x 256 inputs.

/// The element types the output tensor can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    F32,
    /// float16 bit patterns, from a table torch rounded.
    F16,
    /// Raw bytes, no normalisation.
    U8,
}

impl OutKind {
    pub fn parse(name: &str) -> Option<OutKind> {
        Some(match name {
            "float32" => OutKind::F32,
            "float16" => OutKind::F16,
            "uint8" => OutKind::U8,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            OutKind::F32 => 4,
            OutKind::F16 => 2,
            OutKind::U8 => 1,
        }
    }
}

/// The per-channel constants of ToTensor + Normalize, as float32 (torch rounds them so too).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    mean: [f32; 3],
    std: [f32; 3],
    /// Whether the SIMD route may divide by multiplying with a two-part reciprocal (see
    /// `avx2::divide`); set only after the route gave the table's bits for all 3 x 256 inputs,
    /// else it divides.
    reciprocal: bool,
}

impl Affine {
    /// The channel `c` value of byte `x` computed as torchvision's ops compute it.
    fn value(&self, c: usize, x: u8) -> f32 {
        (f32::from(x) / 255.0 - self.mean[c]) / self.std[c]
    }

    /// `Some` when the arithmetic reproduces every entry of `lut` (3 x 256 float32, bit for bit),
    /// so that either route gives the same tensor; `None` otherwise (the table is then used). In
    /// `Some`, `reciprocal` says whether the SIMD route's faster division also reproduced it.
    pub fn matching(mean: [f32; 3], std: [f32; 3], lut: &[f32]) -> Option<Affine> {
        let mut affine = Affine {
            mean,
            std,
            reciprocal: false,
        };
        let same = lut.len() == 768
            && (0..768)
                .all(|i| affine.value(i / 256, (i % 256) as u8).to_bits() == lut[i].to_bits());
        if !same {
            return None;
        }
        // Every input byte once per channel, all in the vector loop (4-byte pixels: no scalar
        // tail): the route is exact for these constants if and only if it gives these values.
        let every_byte: Vec<u8> = (0..=255u8).flat_map(|x| [x, x, x, 0]).collect();
        let mut out = vec![0f32; 768];
        affine.reciprocal = true;
        let exact = affine_to_chw(&every_byte, 4, [0, 1, 2], &affine, &mut out)
            && out.iter().zip(lut).all(|(a, b)| a.to_bits() == b.to_bits());
        affine.reciprocal = exact;
        Some(affine)
    }
}

/// [`Affine::matching`] remembered for the last constants and table seen: every call of
/// `preprocess` passes the same ones, and the check costs about 2 µs.
pub fn matching_cached(mean: [f32; 3], std: [f32; 3], lut: &[f32]) -> Option<Affine> {
    type Entry = ([u32; 3], [u32; 3], Vec<u32>, Option<Affine>);
    static LAST: std::sync::Mutex<Option<Entry>> = std::sync::Mutex::new(None);
    let bits = |v: [f32; 3]| v.map(f32::to_bits);
    let key = (bits(mean), bits(std));
    // A poisoned lock only means another thread panicked mid-update: recompute then.
    if let Ok(mut last) = LAST.lock() {
        if let Some((m, s, t, affine)) = last.as_ref() {
            let same_table =
                t.len() == lut.len() && t.iter().zip(lut).all(|(a, b)| *a == b.to_bits());
            if (*m, *s) == key && same_table {
                return *affine;
            }
        }
        let affine = Affine::matching(mean, std, lut);
        let table = lut.iter().map(|v| v.to_bits()).collect();
        *last = Some((key.0, key.1, table, affine));
        return affine;
    }
    Affine::matching(mean, std, lut)
}

/// How one call normalises: the table, and for float32 output the checked arithmetic route.
#[derive(Debug, Clone, Copy)]
pub struct Normalize<'a, T> {
    pub lut: &'a [T],
    pub affine: Option<Affine>,
}

impl<'a, T: Sample> Normalize<'a, T> {
    /// Normalising by the table alone.
    pub fn table(lut: &'a [T]) -> Normalize<'a, T> {
        Normalize { lut, affine: None }
    }

    /// Write pixels of `ps` bytes as CHW planes (see [`pixels_to_chw`]): by the arithmetic route
    /// where `simd` allows it and this type has one, else by the table. Both give the same bits.
    pub fn write_chw(&self, px: &[u8], ps: usize, rgb: [usize; 3], simd: bool, out: &mut [T]) {
        if let (true, Some(affine)) = (simd, self.affine) {
            if T::affine_to_chw(px, ps, rgb, &affine, out) {
                return;
            }
        }
        pixels_to_chw(px, ps, rgb, self.lut, out);
    }
}

/// An output element type, and whether it has an arithmetic route besides the table.
pub trait Sample: Copy + Send + Sync {
    /// The arithmetic route into `out`; false (nothing written) where this type or CPU has none.
    fn affine_to_chw(
        _px: &[u8],
        _ps: usize,
        _rgb: [usize; 3],
        _affine: &Affine,
        _out: &mut [Self],
    ) -> bool {
        false
    }
}

impl Sample for u8 {}
impl Sample for u16 {}

impl Sample for f32 {
    fn affine_to_chw(
        px: &[u8],
        ps: usize,
        rgb: [usize; 3],
        affine: &Affine,
        out: &mut [f32],
    ) -> bool {
        affine_to_chw(px, ps, rgb, affine, out)
    }
}

/// The arithmetic route (AVX2); false when this CPU or these arguments have none.
fn affine_to_chw(px: &[u8], ps: usize, rgb: [usize; 3], affine: &Affine, out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::resample_simd::has_avx2()
        && std::arch::is_x86_feature_detected!("fma")
        && (1..=4).contains(&ps)
        && rgb.iter().all(|&i| i < ps)
        && out.len() == 3 * (px.len() / ps)
        && px.len().is_multiple_of(ps)
    {
        // SAFETY: AVX2 and FMA are available (checked at run time just above); the sizes were
        // checked.
        unsafe {
            if affine.reciprocal {
                avx2::affine_to_chw::<true>(px, ps, rgb, affine, out)
            } else {
                avx2::affine_to_chw::<false>(px, ps, rgb, affine, out)
            }
        };
        return true;
    }
    let _ = (px, ps, rgb, affine, out);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Affine;
    use std::arch::x86_64::*;

    /// `a / b` in float32. With `RECIPROCAL`, `a` times `1 / b` held as two floats (`hi`, the
    /// rounded reciprocal, and `lo`, what it misses): `a hi + a lo` in one fused multiply-add, an
    /// error near 2^-48 relative, far below half an ulp for almost every quotient. Almost is not
    /// always: [`Affine::matching`] enables it only after checking every input (it held for
    /// CLIP's constants and for 30,000 random ones). Two operations, where `vdivps` takes about
    /// 3.5 cycles of issue per vector; the division route is the fallback.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn divide<const RECIPROCAL: bool>(a: __m256, b: __m256, recip: (__m256, __m256)) -> __m256 {
        if RECIPROCAL {
            _mm256_fmadd_ps(a, recip.0, _mm256_mul_ps(a, recip.1))
        } else {
            _mm256_div_ps(a, b)
        }
    }

    /// Eight pixels per step: two 16-byte loads (pixels 0-3 and 4-7, one per 128-bit lane), one
    /// shuffle per channel widening its bytes to 32-bit lanes, then `(x / 255 - mean) / std` in
    /// float32 (see [`divide`]). Callers check: AVX2 and FMA, `1 <= ps <= 4`, `rgb[c] < ps`,
    /// `out.len() == 3 * pixels`.
    #[target_feature(enable = "avx2,fma")]
    pub fn affine_to_chw<const RECIPROCAL: bool>(
        px: &[u8],
        ps: usize,
        rgb: [usize; 3],
        affine: &Affine,
        out: &mut [f32],
    ) {
        let plane = px.len() / ps;
        let masks: [__m256i; 3] = std::array::from_fn(|c| {
            let mut m = [-1i8; 32];
            for lane in 0..2 {
                for j in 0..4 {
                    m[16 * lane + 4 * j] = (j * ps + rgb[c]) as i8;
                }
            }
            // SAFETY: m is 32 bytes; an unaligned load is allowed.
            unsafe { _mm256_loadu_si256(m.as_ptr() as *const __m256i) }
        });
        let scale = _mm256_set1_ps(255.0);
        let split = |b: f32| {
            let hi = (1.0 / f64::from(b)) as f32;
            let lo = (1.0 / f64::from(b) - f64::from(hi)) as f32;
            (_mm256_set1_ps(hi), _mm256_set1_ps(lo))
        };
        let inv_scale = split(255.0);
        let mean: [__m256; 3] = std::array::from_fn(|c| _mm256_set1_ps(affine.mean[c]));
        let std: [__m256; 3] = std::array::from_fn(|c| _mm256_set1_ps(affine.std[c]));
        let inv_std: [(__m256, __m256); 3] = std::array::from_fn(|c| split(affine.std[c]));
        let mut i = 0;
        // The second load reads 16 bytes from pixel i + 4: stay inside `px`.
        while i + 8 <= plane && (i + 4) * ps + 16 <= px.len() {
            // SAFETY: both 16-byte loads end at or before (i + 4) * ps + 16 <= px.len() (loop
            // condition); every store writes 8 floats at c * plane + i with i + 8 <= plane, inside
            // `out` (3 * plane floats). Unaligned loads and stores are allowed.
            unsafe {
                let lo = _mm_loadu_si128(px.as_ptr().add(i * ps) as *const __m128i);
                let hi = _mm_loadu_si128(px.as_ptr().add((i + 4) * ps) as *const __m128i);
                let bytes = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
                for c in 0..3 {
                    let x = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(bytes, masks[c]));
                    let unit = divide::<RECIPROCAL>(x, scale, inv_scale);
                    let v = divide::<RECIPROCAL>(_mm256_sub_ps(unit, mean[c]), std[c], inv_std[c]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(c * plane + i), v);
                }
            }
            i += 8;
        }
        for j in i..plane {
            for c in 0..3 {
                out[c * plane + j] = affine.value(c, px[j * ps + rgb[c]]);
            }
        }
    }
}

/// Write pixels of `ps` bytes into a CHW plane triple through `lut` (3 x 256 entries), taking
/// red, green and blue from bytes `rgb` of each pixel (L and LA use byte 0 three times: that is
/// Pillow's conversion to RGB, done here without an intermediate image).
pub fn to_chw<T: Copy, const PS: usize>(px: &[u8], rgb: [usize; 3], lut: &[T], out: &mut [T]) {
    let plane = px.len() / PS;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let tables: Option<[&[T; 256]; 3]> = (|| {
        Some([
            lut.get(..256)?.try_into().ok()?,
            lut.get(256..512)?.try_into().ok()?,
            lut.get(512..768)?.try_into().ok()?,
        ])
    })();
    let Some([lr, lg, lb]) = tables else {
        return; // unreachable: Python passes 3 x 256 entries
    };
    let [ir, ig, ib] = rgb;
    if ir >= PS || ig >= PS || ib >= PS {
        return; // unreachable: rgb_bytes gives indices inside the pixel
    }
    // Tables indexed by a byte and pixels of a constant size: no bounds checks in the loop.
    for (((p, r), g), b) in px
        .chunks_exact(PS)
        .zip(r.iter_mut())
        .zip(g.iter_mut())
        .zip(b.iter_mut())
    {
        *r = lr[usize::from(p[ir])];
        *g = lg[usize::from(p[ig])];
        *b = lb[usize::from(p[ib])];
    }
}

/// [`to_chw`] for a run-time pixel size.
pub fn pixels_to_chw<T: Copy>(px: &[u8], ps: usize, rgb: [usize; 3], lut: &[T], out: &mut [T]) {
    match ps {
        1 => to_chw::<T, 1>(px, rgb, lut, out),
        2 => to_chw::<T, 2>(px, rgb, lut, out),
        3 => to_chw::<T, 3>(px, rgb, lut, out),
        _ => to_chw::<T, 4>(px, rgb, lut, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_separated() {
        let lut: Vec<u16> = (0..768u16).collect();
        let rgb = [1u8, 2, 3, 4, 5, 6];
        let mut out = [0u16; 6];
        pixels_to_chw(&rgb, 3, [0, 1, 2], &lut, &mut out);
        assert_eq!(out, [1, 4, 258, 261, 515, 518]);
        let la = [7u8, 200, 9, 100];
        pixels_to_chw(&la, 2, [0, 0, 0], &lut, &mut out[..6]);
        assert_eq!(out, [7, 9, 263, 265, 519, 521]);
    }

    const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
    const STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

    fn table() -> Vec<f32> {
        let affine = Affine {
            mean: MEAN,
            std: STD,
            reciprocal: false,
        };
        (0..768)
            .map(|i| affine.value(i / 256, (i % 256) as u8))
            .collect()
    }

    #[test]
    fn affine_is_refused_unless_it_gives_the_table() {
        let mut lut = table();
        assert!(Affine::matching(MEAN, STD, &lut).is_some());
        lut[700] = f32::from_bits(lut[700].to_bits() ^ 1); // one ulp off, one entry
        assert!(Affine::matching(MEAN, STD, &lut).is_none());
        assert!(Affine::matching(MEAN, STD, &lut[..767]).is_none());
    }

    #[test]
    fn the_cache_answers_for_the_table_it_was_given() {
        let lut = table();
        let mut off = lut.clone();
        off[300] = f32::from_bits(off[300].to_bits() ^ 1);
        // Same constants, different tables: each call gets the answer for its own table.
        for _ in 0..2 {
            assert!(matching_cached(MEAN, STD, &lut).is_some());
            assert!(matching_cached(MEAN, STD, &off).is_none());
            assert!(matching_cached(MEAN, STD, &lut[..767]).is_none());
        }
        assert_eq!(
            matching_cached(MEAN, STD, &lut).map(|a| a.reciprocal),
            Affine::matching(MEAN, STD, &lut).map(|a| a.reciprocal)
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn clip_constants_take_the_reciprocal_route_where_the_cpu_has_fma() {
        let affine = Affine::matching(MEAN, STD, &table());
        let fma = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        assert_eq!(affine.map(|a| a.reciprocal), Some(fma));
    }

    #[test]
    fn any_constants_give_the_table_by_either_division() {
        // Constants drawn at random: the route `matching` picks, and the true-division route it
        // falls back to, must both give the table's bits for every byte.
        let mut x = 0x9e37_79b9_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let px: Vec<u8> = (0..=255u8)
            .rev()
            .flat_map(|v| [v, 255 - v, v / 2])
            .collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for _ in 0..300 {
            let mean: [f32; 3] = std::array::from_fn(|_| (next() % 2000) as f32 / 1000.0 - 0.5);
            let std: [f32; 3] = std::array::from_fn(|_| (next() % 1000 + 1) as f32 / 997.0);
            let divide = Affine {
                mean,
                std,
                reciprocal: false,
            };
            let lut: Vec<f32> = (0..768)
                .map(|i| divide.value(i / 256, (i % 256) as u8))
                .collect();
            let mut by_table = vec![0f32; 768];
            pixels_to_chw(&px, 3, [0, 1, 2], &lut, &mut by_table);
            for affine in [Affine::matching(mean, std, &lut), Some(divide)] {
                assert!(affine.is_some());
                let norm = Normalize { lut: &lut, affine };
                let mut by_route = vec![1f32; 768];
                norm.write_chw(&px, 3, [0, 1, 2], true, &mut by_route);
                assert_eq!(
                    bits(&by_table),
                    bits(&by_route),
                    "mean {mean:?} std {std:?}"
                );
            }
        }
    }

    #[test]
    fn arithmetic_route_equals_the_table_for_every_pixel_size_and_length() {
        let lut = table();
        let affine = Affine::matching(MEAN, STD, &lut);
        assert!(affine.is_some());
        let norm = Normalize { lut: &lut, affine };
        let mut x = 0x2545_f491_u32;
        for (ps, rgb) in [
            (1, [0, 0, 0]),
            (2, [0, 0, 0]),
            (3, [0, 1, 2]),
            (4, [0, 1, 2]),
            (4, [2, 1, 0]),
        ] {
            for pixels in [0usize, 1, 7, 8, 9, 15, 16, 17, 50, 224 * 3 + 5] {
                let px: Vec<u8> = (0..pixels * ps)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                let mut by_table = vec![0f32; 3 * pixels];
                let mut by_route = vec![1f32; 3 * pixels];
                pixels_to_chw(&px, ps, rgb, &lut, &mut by_table);
                norm.write_chw(&px, ps, rgb, true, &mut by_route);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&by_table), bits(&by_route), "ps {ps}, {pixels} pixels");
            }
        }
    }
}
