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

/// Write packed RGB (`n * n * 3` bytes) into a CHW plane triple through `lut` (3 x 256 entries).
pub fn rgb_to_chw<T: Copy>(rgb: &[u8], lut: &[T], out: &mut [T]) {
    let plane = rgb.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let (lr, rest) = lut.split_at(256);
    let (lg, lb) = rest.split_at(256);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = lr[usize::from(px[0])];
        g[i] = lg[usize::from(px[1])];
        b[i] = lb[usize::from(px[2])];
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
        rgb_to_chw(&rgb, &lut, &mut out);
        assert_eq!(out, [1, 4, 258, 261, 515, 518]);
    }
}
