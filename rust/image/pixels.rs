//! Image modes and where an image's pixels live: Pillow's own row buffers or packed bytes.

use std::ops::Range;

/// The Pillow modes the Rust path resizes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    L,
    LA,
    Rgb,
    Rgba,
    Cmyk,
    I,
    F,
    I16,
}

impl Mode {
    pub fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "L" => Mode::L,
            "LA" => Mode::LA,
            "RGB" => Mode::Rgb,
            "RGBA" => Mode::Rgba,
            "CMYK" => Mode::Cmyk,
            "I" => Mode::I,
            "F" => Mode::F,
            "I;16" => Mode::I16,
            _ => return None,
        })
    }

    /// Bytes per pixel in Python's packed form (`Image.tobytes()`, numpy HWC arrays).
    pub fn packed_size(self) -> usize {
        match self {
            Mode::L => 1,
            Mode::LA | Mode::I16 => 2,
            Mode::Rgb => 3,
            Mode::Rgba | Mode::Cmyk | Mode::I | Mode::F => 4,
        }
    }

    /// (bands, bytes per pixel) of Pillow's in-memory layout: 2- and 3-band images use 4 bytes.
    pub fn pillow_layout(self) -> (i32, usize) {
        match self {
            Mode::L => (1, 1),
            Mode::LA => (2, 4),
            Mode::Rgb => (3, 4),
            Mode::Rgba | Mode::Cmyk => (4, 4),
            Mode::I | Mode::F => (1, 4),
            Mode::I16 => (1, 2),
        }
    }

    /// Modes with 8-bit bands (fixed-point resampling).
    pub fn is_u8(self) -> bool {
        !matches!(self, Mode::I | Mode::F | Mode::I16)
    }

    /// Modes that Pillow resizes premultiplied (LA -> La, RGBA -> RGBa).
    pub fn has_alpha(self) -> bool {
        matches!(self, Mode::LA | Mode::Rgba)
    }
}

/// Where the pixels of one image are: row slices (each `width * ps` bytes long or more).
pub struct Source<'a> {
    pub rows: Vec<&'a [u8]>,
    /// Bytes per pixel in `rows`.
    pub ps: usize,
    pub width: usize,
    pub height: usize,
    pub mode: Mode,
}

impl<'a> Source<'a> {
    /// Packed, row-major pixels; fails when the length does not match the size.
    pub fn packed(data: &'a [u8], width: usize, height: usize, mode: Mode) -> Result<Self, String> {
        let ps = mode.packed_size();
        let expected = width
            .checked_mul(height)
            .and_then(|p| p.checked_mul(ps))
            .ok_or("image size overflows")?;
        if data.len() != expected {
            return Err(format!(
                "expected {expected} bytes for a {width}x{height} {mode:?} image, got {}",
                data.len()
            ));
        }
        let rows = if width == 0 {
            Vec::new()
        } else {
            data.chunks_exact(width * ps).collect()
        };
        Ok(Source {
            rows,
            ps,
            width,
            height,
            mode,
        })
    }

    /// The rows and columns `rows`/`cols` (in pixels), as slices that start at column `cols.start`.
    pub fn window(&self, rows: Range<usize>, cols: Range<usize>) -> Vec<&'a [u8]> {
        self.rows[rows]
            .iter()
            .map(|r| &r[cols.start * self.ps..cols.end * self.ps])
            .collect()
    }
}

/// Packed RGB -> Pillow's 4-byte RGB pixels (the padding byte, which no pass reads, set to 255).
pub fn widen_rgb(src: &[u8], dst: &mut [u8]) {
    let pixels = (src.len() / 3).min(dst.len() / 4);
    #[cfg(target_arch = "x86_64")]
    let done = if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: SSSE3 is available (checked at run time just above).
        unsafe { widen_rgb_ssse3(&src[..pixels * 3], &mut dst[..pixels * 4]) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    widen_rgb_scalar(&src[done * 3..pixels * 3], &mut dst[done * 4..pixels * 4]);
}

fn widen_rgb_scalar(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(3)) {
        d.copy_from_slice(&[s[0], s[1], s[2], 255]);
    }
}

/// Four pixels per shuffle while 16 source bytes can be loaded; returns the pixels done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn widen_rgb_ssse3(src: &[u8], dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let spread = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    let pad = _mm_set1_epi32(0xff00_0000_u32 as i32);
    let mut i = 0;
    while 3 * i + 16 <= src.len() && 4 * i + 16 <= dst.len() {
        // SAFETY: bytes 3i..3i+16 of src and 4i..4i+16 of dst are in bounds (loop condition);
        // unaligned loads and stores.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().add(3 * i) as *const __m128i);
            let w = _mm_or_si128(_mm_shuffle_epi8(v, spread), pad);
            _mm_storeu_si128(dst.as_mut_ptr().add(4 * i) as *mut __m128i, w);
        }
        i += 4;
    }
    i
}

/// Premultiply by alpha (the last byte of each pixel) as Pillow's RGBA -> RGBa conversion does,
/// from `src` into `dst` (the same length).
pub fn premultiply(src: &[u8], ps: usize, dst: &mut [u8]) {
    match ps {
        2 => premultiply_ps::<2>(src, dst),
        4 => {
            let len = src.len().min(dst.len()) / 4 * 4;
            #[cfg(target_arch = "x86_64")]
            let done = if super::resample_simd::has_avx2() {
                // SAFETY: AVX2 is available (checked at run time just above).
                unsafe { premultiply4_avx2(&src[..len], &mut dst[..len]) }
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            premultiply_ps::<4>(&src[done..len], &mut dst[done..len]);
        }
        _ => {
            for (d, px) in dst.chunks_exact_mut(ps).zip(src.chunks_exact(ps)) {
                premultiply_pixel(px, d);
            }
        }
    }
}

/// A constant pixel size, so that the loop vectorises.
fn premultiply_ps<const PS: usize>(src: &[u8], dst: &mut [u8]) {
    for (d, px) in dst.chunks_exact_mut(PS).zip(src.chunks_exact(PS)) {
        premultiply_pixel(px, d);
    }
}

/// [`premultiply`] of 4-byte pixels, eight per step, in 16-bit lanes: `c a + 128` fits 16 bits
/// (at most 65153), and so does `(t >> 8) + t`, so Pillow's arithmetic is exact here. Returns the
/// bytes done (whole steps; the caller finishes the rest).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn premultiply4_avx2(src: &[u8], dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_si256();
    let bias = _mm256_set1_epi16(128);
    let len = src.len().min(dst.len());
    let mut i = 0;
    while i + 32 <= len {
        // SAFETY: i + 32 <= the length of both (loop condition); unaligned loads and stores.
        unsafe {
            let v = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            let one = |wide: __m256i| {
                // Each pixel's alpha (word 3 of its four) in all four words.
                let alpha = _mm256_shufflehi_epi16::<0xFF>(_mm256_shufflelo_epi16::<0xFF>(wide));
                let t = _mm256_add_epi16(_mm256_mullo_epi16(wide, alpha), bias);
                let v = _mm256_srli_epi16::<8>(_mm256_add_epi16(_mm256_srli_epi16::<8>(t), t));
                _mm256_blend_epi16::<0b1000_1000>(v, wide) // alpha itself stays
            };
            let lo = one(_mm256_unpacklo_epi8(v, zero));
            let hi = one(_mm256_unpackhi_epi8(v, zero));
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i) as *mut __m256i,
                _mm256_packus_epi16(lo, hi),
            );
        }
        i += 32;
    }
    i
}

#[inline(always)]
fn premultiply_pixel(px: &[u8], d: &mut [u8]) {
    let ps = px.len();
    let alpha = u32::from(px[ps - 1]);
    for (o, &c) in d.iter_mut().zip(&px[..ps - 1]) {
        let t = u32::from(c) * alpha + 128;
        *o = (((t >> 8) + t) >> 8) as u8;
    }
    d[ps - 1] = px[ps - 1];
}

/// Undo the premultiplication as Pillow's RGBa -> RGBA conversion does.
pub fn unpremultiply(px: &mut [u8], ps: usize) {
    for p in px.chunks_exact_mut(ps) {
        let alpha = u32::from(p[ps - 1]);
        if alpha != 0 && alpha != 255 {
            for c in &mut p[..ps - 1] {
                *c = ((255 * u32::from(*c)) / alpha).min(255) as u8;
            }
        }
    }
}

/// Pillow's `Imaging` struct, read through the capsule `Image.getim()` returns.
///
/// Two layouts exist: Pillow >= 12 stores the mode as a 4-byte enum, older ones as `char[7]`.
/// Each candidate is checked against the size, band count and pixel size Python reported;
/// when neither matches, the caller falls back to `Image.tobytes()`.
#[cfg(target_pointer_width = "64")]
pub mod pillow {
    struct Layout {
        bands: usize,
        xsize: usize,
        ysize: usize,
        image: usize,
        pixelsize: usize,
        linesize: usize,
    }

    const LAYOUTS: [Layout; 2] = [
        Layout {
            bands: 12,
            xsize: 16,
            ysize: 20,
            image: 48,
            pixelsize: 72,
            linesize: 76,
        },
        Layout {
            bands: 16,
            xsize: 20,
            ysize: 24,
            image: 56,
            pixelsize: 80,
            linesize: 84,
        },
    ];

    /// Row pointers of a Pillow image, after checking that the struct looks as expected.
    ///
    /// # Safety
    /// `im` must point to a live `ImagingMemoryInstance` (at least 88 bytes) whose rows stay
    /// valid and unchanged while the returned slices are used.
    pub unsafe fn rows<'a>(
        im: *const u8,
        width: usize,
        height: usize,
        bands: i32,
        pixelsize: usize,
    ) -> Option<Vec<&'a [u8]>> {
        let read_i32 = |off: usize| -> i32 {
            // SAFETY: off + 4 <= 88, inside the struct (caller's contract); unaligned read is safe.
            unsafe { std::ptr::read_unaligned(im.add(off) as *const i32) }
        };
        for l in &LAYOUTS {
            let ok = read_i32(l.bands) == bands
                && read_i32(l.xsize) as i64 == width as i64
                && read_i32(l.ysize) as i64 == height as i64
                && read_i32(l.pixelsize) as i64 == pixelsize as i64
                && read_i32(l.linesize) as i64 == (width * pixelsize) as i64;
            if !ok {
                continue;
            }
            // SAFETY: the layout matched, so this field is the `char **image` row table.
            let table =
                unsafe { std::ptr::read_unaligned(im.add(l.image) as *const *const *const u8) };
            if table.is_null() {
                return None;
            }
            let mut rows = Vec::with_capacity(height);
            for y in 0..height {
                // SAFETY: Pillow's row table has `ysize` entries, each a row of `linesize` bytes.
                let row = unsafe { *table.add(y) };
                if row.is_null() {
                    return None;
                }
                // SAFETY: see above; the caller keeps the image alive and unmodified.
                rows.push(unsafe { std::slice::from_raw_parts(row, width * pixelsize) });
            }
            return Some(rows);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_rgb_simd_equals_scalar_at_every_length() {
        for pixels in 0..40 {
            let src: Vec<u8> = (0..pixels * 3).map(|i| (i * 37 % 251) as u8).collect();
            let mut fast = vec![0u8; pixels * 4];
            let mut slow = vec![1u8; pixels * 4];
            widen_rgb(&src, &mut fast);
            widen_rgb_scalar(&src, &mut slow);
            assert_eq!(fast, slow, "{pixels} pixels");
            for (p, q) in fast.chunks_exact(4).zip(src.chunks_exact(3)) {
                assert_eq!(&p[..3], q);
            }
        }
    }

    #[test]
    fn premultiply_roundtrip_of_opaque_is_identity() {
        let src = [10u8, 20, 30, 255, 1, 2, 3, 0];
        let mut dst = vec![0u8; 8];
        premultiply(&src, 4, &mut dst);
        assert_eq!(&dst[..4], &src[..4]);
        assert_eq!(&dst[4..], &[0, 0, 0, 0]);
        let mut back = dst.clone();
        unpremultiply(&mut back, 4);
        assert_eq!(&back[..4], &src[..4]);
    }

    #[test]
    fn premultiply_simd_equals_pillow_arithmetic() {
        // Every (value, alpha) pair, at lengths that leave scalar tails.
        let src: Vec<u8> = (0..=255u8)
            .flat_map(|a| {
                (0..=255u8)
                    .step_by(3)
                    .flat_map(move |c| [c, 255 - c, c / 2, a])
            })
            .collect();
        for len in [0usize, 4, 28, 32, 36, 64, 100, src.len()] {
            let mut fast = vec![0u8; len];
            premultiply(&src[..len], 4, &mut fast);
            for (p, d) in src[..len].chunks_exact(4).zip(fast.chunks_exact(4)) {
                let a = u32::from(p[3]);
                for c in 0..3 {
                    let t = u32::from(p[c]) * a + 128;
                    assert_eq!(u32::from(d[c]), ((t >> 8) + t) >> 8, "{p:?}");
                }
                assert_eq!(d[3], p[3]);
            }
        }
    }

    #[test]
    fn premultiply_half_alpha() {
        let mut dst = vec![0u8; 2];
        premultiply(&[200, 128], 2, &mut dst);
        // 200 * 128 / 255 = 100.39 -> 100
        assert_eq!(dst, vec![100, 128]);
        unpremultiply(&mut dst, 2);
        assert_eq!(dst, vec![199, 128]);
    }

    #[test]
    fn packed_rejects_wrong_length() {
        assert!(Source::packed(&[0u8; 5], 2, 1, Mode::Rgb).is_err());
        assert!(Source::packed(&[0u8; 6], 2, 1, Mode::Rgb).is_ok());
    }
}
