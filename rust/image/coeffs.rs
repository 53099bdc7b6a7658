//! Pillow's bicubic filter weights for one axis, computed the way `Resample.c` computes them.
//!
//! Every output index gets a window `[start, start + len)` of source indices and `len` weights
//! (normalised to sum 1 in double precision). 8-bit bands use the weights as 22-bit fixed point.
//! Only the output indices that survive the centre crop are computed.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

/// How many axes each thread remembers: a dataloader's images often share a few sizes.
const RECENT_AXES: usize = 8;

/// `Axis::bicubic`'s arguments: source size, output size, first and end output index.
type AxisKey = (usize, usize, usize, usize);

thread_local! {
    /// Recently used axes of this thread, most recent first.
    static RECENT: RefCell<Vec<(AxisKey, Rc<Axis>)>> = const { RefCell::new(Vec::new()) };
}

/// Fractional bits of the fixed-point weights for 8-bit bands (`32 - 8 - 2` in Pillow).
pub const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel with a = -0.5, evaluated exactly as its C code does.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The weights of one resampling axis for a contiguous range of output indices.
#[derive(Debug, Clone)]
pub struct Axis {
    /// First source index of each output's window.
    pub start: Vec<usize>,
    /// Number of source samples in each output's window.
    pub len: Vec<usize>,
    /// Row length of `weights` and `fixed` (the largest window Pillow allocates).
    pub ksize: usize,
    /// Normalised weights in double precision (I, F and I;16 bands).
    pub weights: Vec<f64>,
    /// The same weights in 22-bit fixed point, rounded as Pillow rounds them (8-bit bands).
    pub fixed: Vec<i32>,
}

impl Axis {
    /// Weights for resizing `in_size` samples to `out_size`, for the outputs in `outputs`.
    pub fn bicubic(in_size: usize, out_size: usize, outputs: Range<usize>) -> Axis {
        // Pillow passes the box edges as C floats; (in1 - in0) is float arithmetic, exact here.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let count = outputs.len();
        let mut start = Vec::with_capacity(count);
        let mut len = Vec::with_capacity(count);
        let mut weights = vec![0.0f64; count * ksize];
        let inv = 1.0 / filterscale;
        for (slot, xx) in outputs.enumerate() {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; negative starts clamp to 0 afterwards.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).max(0) as usize;
            let row = &mut weights[slot * ksize..slot * ksize + n.min(ksize)];
            let mut total = 0.0;
            for (x, w) in row.iter_mut().enumerate() {
                let v = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * inv);
                *w = v;
                total += v;
            }
            if total != 0.0 {
                for w in row.iter_mut() {
                    *w /= total;
                }
            }
            start.push(xmin as usize);
            len.push(n.min(ksize));
        }
        let fixed = weights
            .iter()
            .map(|&w| {
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                }
            })
            .collect();
        Axis {
            start,
            len,
            ksize,
            weights,
            fixed,
        }
    }

    /// [`Axis::bicubic`], reusing this thread's result for the same arguments when it has one.
    pub fn bicubic_shared(in_size: usize, out_size: usize, outputs: Range<usize>) -> Rc<Axis> {
        let key = (in_size, out_size, outputs.start, outputs.end);
        RECENT.with(|recent| {
            let mut recent = recent.borrow_mut();
            if let Some(i) = recent.iter().position(|(k, _)| *k == key) {
                let entry = recent.remove(i);
                let axis = Rc::clone(&entry.1);
                recent.insert(0, entry);
                return axis;
            }
            let axis = Rc::new(Axis::bicubic(in_size, out_size, outputs));
            recent.insert(0, (key, Rc::clone(&axis)));
            recent.truncate(RECENT_AXES);
            axis
        })
    }

    /// Number of output indices this axis covers.
    pub fn count(&self) -> usize {
        self.start.len()
    }

    /// The source range every window of this axis lies in.
    pub fn span(&self) -> Range<usize> {
        let lo = self.start.iter().copied().min().unwrap_or(0);
        let hi = self
            .start
            .iter()
            .zip(&self.len)
            .map(|(s, l)| s + l)
            .max()
            .unwrap_or(0);
        lo..hi.max(lo)
    }

    /// Fixed-point weights of output `slot`.
    pub fn fixed_of(&self, slot: usize) -> &[i32] {
        &self.fixed[slot * self.ksize..slot * self.ksize + self.len[slot]]
    }

    /// Double-precision weights of output `slot`.
    pub fn weights_of(&self, slot: usize) -> &[f64] {
        &self.weights[slot * self.ksize..slot * self.ksize + self.len[slot]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_known_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(1.5), -0.0625);
    }

    #[test]
    fn weights_sum_to_one_and_windows_stay_inside() {
        let axis = Axis::bicubic(1000, 224, 0..224);
        for slot in 0..axis.count() {
            let s: f64 = axis.weights_of(slot).iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
            assert!(axis.start[slot] + axis.len[slot] <= 1000);
        }
        let span = axis.span();
        assert_eq!(span.start, 0);
        assert_eq!(span.end, 1000);
    }

    #[test]
    fn sub_range_equals_slice_of_full_range() {
        let full = Axis::bicubic(777, 300, 0..300);
        let part = Axis::bicubic(777, 300, 38..262);
        for slot in 0..part.count() {
            assert_eq!(part.start[slot], full.start[slot + 38]);
            assert_eq!(part.fixed_of(slot), full.fixed_of(slot + 38));
        }
    }

    #[test]
    fn shared_axes_equal_fresh_ones() {
        for (i, o, r) in [(777, 300, 38..262), (777, 300, 0..300), (1000, 224, 0..224)]
            .into_iter()
            .cycle()
            .take(30)
        {
            let shared = Axis::bicubic_shared(i, o, r.clone());
            let fresh = Axis::bicubic(i, o, r);
            assert_eq!(shared.start, fresh.start);
            assert_eq!(shared.fixed, fresh.fixed);
            assert_eq!(shared.weights, fresh.weights);
        }
        for size in 1..20 {
            Axis::bicubic_shared(size, 7, 0..7);
        }
        RECENT.with(|r| assert_eq!(r.borrow().len(), RECENT_AXES));
    }

    #[test]
    fn upscaling_uses_unit_filterscale() {
        let axis = Axis::bicubic(2, 224, 0..224);
        assert_eq!(axis.ksize, 5);
        assert!(axis.len.iter().all(|&l| l <= 2));
    }
}
