//! fp16 / bf16 -> fp32 for whole slices with x86 vector instructions, beside the `half` crate's
//! conversions, which stay the reference (the tests compare every 16-bit pattern).
//!
//! Why not `half`'s own F16C path: it converts eight values per call of an outlined function that
//! returns them through the stack, then copies them out: a call, a `vzeroupper` and a store-to-load
//! round trip per 32 bytes written. In a load, conversion is most of the user time (RN50: ~60 of
//! ~120 ms CPU), so the loop here converts 32 values per iteration in registers and writes them
//! with non-temporal stores where the destination is large: the weights are not read again until
//! the model runs, and streaming stores spare the read-for-ownership of every destination line
//! (a third of the memory traffic of a plain store loop).

/// Destinations at least this large are written with non-temporal stores (smaller ones are likely
/// to be read again soon from the cache, and gain nothing from bypassing it).
const STREAM_MIN_BYTES: usize = 256 << 10;

/// Converts `src` (fp16 bit patterns) into `dst` (same length); false where this CPU lacks F16C,
/// leaving `dst` untouched for the caller's reference path.
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if src.len() == dst.len()
            && std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: AVX and F16C were detected just above; lengths are equal.
            unsafe { x86::f16_to_f32(src, dst) };
            return true;
        }
    }
    let _ = (src, dst);
    false
}

/// One bf16 value as torch widens it: the upper half of an f32, every bit kept (NaN payloads too;
/// `half`'s `to_f32` sets the quiet bit of a signalling NaN, torch does not).
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Converts `src` (bf16 bit patterns) into `dst` (same length) as torch does (see
/// `bf16_bits_to_f32`); false where this CPU lacks AVX2.
pub fn bf16_to_f32(src: &[u16], dst: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if src.len() == dst.len() && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected just above; lengths are equal.
            unsafe { x86::bf16_to_f32(src, dst) };
            return true;
        }
    }
    let _ = (src, dst);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::STREAM_MIN_BYTES;
    use std::arch::x86_64::*;

    /// Values per loop iteration: four 256-bit results.
    const STEP: usize = 32;

    /// The number of leading elements to convert one by one so that `dst[head..]` starts on a
    /// 32-byte boundary (all of them where that cannot happen).
    fn head_to_align(dst: &[f32]) -> usize {
        let misalign = (dst.as_ptr() as usize) % 32;
        if !misalign.is_multiple_of(4) {
            return dst.len(); // not even f32-aligned: no aligned vector stores at all
        }
        (((32 - misalign) % 32) / 4).min(dst.len())
    }

    /// # Safety
    /// The CPU must support AVX and F16C; `src.len() == dst.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        // SAFETY: the caller's guarantees; each load reads 8 values at `at`, inside `src`.
        unsafe {
            widen(
                src,
                dst,
                |b| half::f16::from_bits(b).to_f32(),
                |at| _mm256_cvtph_ps(_mm_loadu_si128(at.cast())),
            )
        }
    }

    /// # Safety
    /// The CPU must support AVX2; `src.len() == dst.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
        // SAFETY: as in f16_to_f32. A bf16 value is the upper half of its f32: widen each 16-bit
        // lane to 32 bits and shift it up, exact for every pattern (NaNs included).
        unsafe {
            widen(src, dst, super::bf16_bits_to_f32, |at| {
                let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(at.cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
            })
        }
    }

    /// The loop both conversions share: `scalar` for the unaligned head and the tail, `eight`
    /// (eight values read at a pointer, widened in one register) for the 32-byte aligned body.
    /// Inlined into each caller, so it is compiled with that caller's target features.
    ///
    /// # Safety
    /// `src.len() == dst.len()`; `eight` may read 8 values at any pointer it is given inside
    /// `src`, and needs at most AVX plus the caller's features, which the CPU must support.
    #[inline(always)]
    unsafe fn widen(
        src: &[u16],
        dst: &mut [f32],
        scalar: impl Fn(u16) -> f32,
        eight: impl Fn(*const u16) -> __m256,
    ) {
        let stream = dst.len() * 4 >= STREAM_MIN_BYTES;
        let head = head_to_align(dst);
        for i in 0..head {
            dst[i] = scalar(src[i]);
        }
        let body = (dst.len() - head) / STEP * STEP;
        let (s, d) = (src[head..].as_ptr(), dst[head..].as_mut_ptr());
        let mut i = 0;
        while i < body {
            // SAFETY: i + STEP <= body <= len - head, so the four 8-value loads and stores stay
            // inside both slices; `d` is 32-byte aligned (head_to_align) for the aligned stores.
            unsafe {
                let v = [
                    eight(s.add(i)),
                    eight(s.add(i + 8)),
                    eight(s.add(i + 16)),
                    eight(s.add(i + 24)),
                ];
                store4(d.add(i), v, stream);
            }
            i += STEP;
        }
        if stream {
            // SAFETY: SSE is part of x86_64. Streaming stores are weakly ordered: publish them
            // before returning.
            unsafe { _mm_sfence() };
        }
        for j in head + body..dst.len() {
            dst[j] = scalar(src[j]);
        }
    }

    /// Writes 32 floats at the 32-byte aligned `d`.
    ///
    /// # Safety
    /// `d` must be 32-byte aligned with 32 writable floats; the CPU must support AVX.
    #[inline(always)]
    unsafe fn store4(d: *mut f32, v: [__m256; 4], stream: bool) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            if stream {
                _mm256_stream_ps(d, v[0]);
                _mm256_stream_ps(d.add(8), v[1]);
                _mm256_stream_ps(d.add(16), v[2]);
                _mm256_stream_ps(d.add(24), v[3]);
            } else {
                _mm256_store_ps(d, v[0]);
                _mm256_store_ps(d.add(8), v[1]);
                _mm256_store_ps(d.add(16), v[2]);
                _mm256_store_ps(d.add(24), v[3]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Every 16-bit pattern, at every start offset modulo the vector width, in lengths that leave
    /// heads and tails, both below and above the streaming threshold.
    fn patterns(len: usize) -> Vec<u16> {
        (0..len)
            .map(|i| (i.wrapping_mul(40503) % 65536) as u16)
            .collect()
    }

    fn check(convert: fn(&[u16], &mut [f32]) -> bool, reference: fn(u16) -> f32) {
        for len in [
            0usize,
            1,
            7,
            31,
            33,
            65536 + 13,
            (STREAM_MIN_BYTES / 4) + 77,
        ] {
            let src = patterns(len + 8);
            for offset in 0..8 {
                let s = &src[offset..offset + len];
                let mut out = vec![0f32; len + 8];
                let d = &mut out[offset..offset + len];
                if !convert(s, d) {
                    return; // no vector unit here: nothing to compare
                }
                for (k, (&bits, &got)) in s.iter().zip(d.iter()).enumerate() {
                    let want = reference(bits);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "len {len} offset {offset} at {k}: {bits:#06x}"
                    );
                }
            }
        }
    }

    #[test]
    fn f16_matches_the_reference_for_every_pattern() {
        check(f16_to_f32, |b| f16::from_bits(b).to_f32());
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut out = vec![0f32; all.len()];
        if f16_to_f32(&all, &mut out) {
            for (&b, &v) in all.iter().zip(out.iter()) {
                assert_eq!(
                    v.to_bits(),
                    f16::from_bits(b).to_f32().to_bits(),
                    "{b:#06x}"
                );
            }
        }
    }

    #[test]
    fn bf16_matches_the_reference_for_every_pattern() {
        // torch's rule, not half's (which quiets signalling NaNs): checked against torch in
        // tests/test_checkpoint.py.
        check(bf16_to_f32, bf16_bits_to_f32);
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut out = vec![0f32; all.len()];
        if bf16_to_f32(&all, &mut out) {
            for (&b, &v) in all.iter().zip(out.iter()) {
                assert_eq!(v.to_bits(), u32::from(b) << 16, "{b:#06x}");
                if !bf16::from_bits(b).is_nan() {
                    assert_eq!(v, bf16::from_bits(b).to_f32(), "{b:#06x}");
                }
            }
        }
    }
}
