//! torchvision's geometry: Resize(n) on the shorter side, then CenterCrop(n).

use super::resample::PassOrder;
use std::ops::Range;

/// Where the n x n output lies in the resized image, and which passes make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub src_w: usize,
    pub src_h: usize,
    /// Size after torchvision's Resize.
    pub out_w: usize,
    pub out_h: usize,
    /// Top-left corner of the crop in the resized image.
    pub x0: usize,
    pub y0: usize,
    pub n: usize,
    pub order: PassOrder,
}

/// torchvision's Resize(int): the short side becomes n, the long side is `int(n * long / short)`.
pub fn resized_size(w: usize, h: usize, n: usize) -> (usize, usize) {
    let long_of = |long: usize, short: usize| ((n as f64 * long as f64) / short as f64) as usize;
    if w <= h {
        (n, long_of(h, w))
    } else {
        (long_of(w, h), n)
    }
}

/// torchvision's CenterCrop offset: `int(round((size - n) / 2))`, halves rounded to even.
pub fn crop_offset(size: usize, n: usize) -> usize {
    ((size - n) as f64 / 2.0).round_ties_even() as usize
}

impl Geometry {
    pub fn new(src_w: usize, src_h: usize, n: usize) -> Result<Geometry, String> {
        if src_w == 0 || src_h == 0 {
            return Err(format!("image has zero size ({src_w}x{src_h})"));
        }
        if n == 0 {
            return Err("n_px must be positive".into());
        }
        if src_w > i32::MAX as usize || src_h > i32::MAX as usize {
            return Err(format!("image too large ({src_w}x{src_h})"));
        }
        let (out_w, out_h) = resized_size(src_w, src_h, n);
        if out_w < n || out_h < n {
            return Err(format!(
                "resized size {out_w}x{out_h} is smaller than the crop {n}"
            ));
        }
        Ok(Geometry {
            src_w,
            src_h,
            out_w,
            out_h,
            x0: crop_offset(out_w, n),
            y0: crop_offset(out_h, n),
            n,
            order: PassOrder::choose(src_w, src_h, out_w, out_h),
        })
    }

    /// Output columns and rows of the resized image that the crop keeps.
    pub fn kept_cols(&self) -> Range<usize> {
        self.x0..self.x0 + self.n
    }

    pub fn kept_rows(&self) -> Range<usize> {
        self.y0..self.y0 + self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_sizes() {
        assert_eq!(resized_size(640, 480, 224), (298, 224));
        assert_eq!(resized_size(300, 3000, 224), (224, 2240));
        assert_eq!(resized_size(5000, 50, 224), (22400, 224));
        assert_eq!(resized_size(1, 1, 224), (224, 224));
        assert_eq!(resized_size(2, 3, 224), (224, 336));
    }

    #[test]
    fn crop_rounds_half_to_even() {
        assert_eq!(crop_offset(225, 224), 0); // 0.5 -> 0
        assert_eq!(crop_offset(227, 224), 2); // 1.5 -> 2
        assert_eq!(crop_offset(229, 224), 2); // 2.5 -> 2
        assert_eq!(crop_offset(298, 224), 37);
    }

    #[test]
    fn zero_size_is_an_error() {
        assert!(Geometry::new(0, 10, 224).is_err());
        assert!(Geometry::new(10, 0, 224).is_err());
    }
}
