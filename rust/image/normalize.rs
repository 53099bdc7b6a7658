//! ToTensor + Normalize as a per-channel lookup table: HWC RGB bytes -> CHW values.
//!
//! With 256 possible inputs per channel, `(x / 255 - mean) / std` in float32 is a table; Python
//! builds it with torch's own ops, so the values are exactly those of torchvision's transforms.

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
}
