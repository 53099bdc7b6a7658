//! Pillow-exact bicubic resize of the centre-crop window: the scalar reference.
//!
//! Pillow resizes in two separable passes and rounds between them, so the result depends on the
//! pass order; `PassOrder::choose` reproduces the order of the Pillow version we test against.
//! Each pass reads rows of interleaved pixels and computes only the outputs the crop keeps.

use std::sync::atomic::{AtomicBool, Ordering};

use super::coeffs::{Axis, PRECISION_BITS};
use super::resample_simd;

/// Which passes run, and in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOrder {
    /// The size already matches: a plain crop.
    Copy,
    HorizontalOnly,
    VerticalOnly,
    HorizontalFirst,
    VerticalFirst,
}

/// Whether the Pillow clipfast reproduces runs the vertical pass first on tall images (Pillow >= 13,
/// python-pillow/Pillow#9549); older versions always go horizontal first, and the intermediate
/// rounding makes the order visible. Set once by `clipfast.transforms` from the installed Pillow.
static VERTICAL_FIRST: AtomicBool = AtomicBool::new(true);

/// Follow the pass order of Pillow >= 13 (`true`, the default) or of older Pillow (`false`).
pub fn set_vertical_first(enabled: bool) {
    VERTICAL_FIRST.store(enabled, Ordering::Relaxed);
}

impl PassOrder {
    /// Pillow 13 runs the vertical pass first when the height shrinks by more than twice what the
    /// width shrinks (`(H - h) > 2 (W - w)`); older versions always go horizontal first
    /// (`set_vertical_first(false)`).
    pub fn choose(src_w: usize, src_h: usize, out_w: usize, out_h: usize) -> PassOrder {
        Self::choose_for(
            VERTICAL_FIRST.load(Ordering::Relaxed),
            src_w,
            src_h,
            out_w,
            out_h,
        )
    }

    /// `choose` for Pillow >= 13 (`vertical_first`) or older Pillow.
    pub fn choose_for(
        vertical_first: bool,
        src_w: usize,
        src_h: usize,
        out_w: usize,
        out_h: usize,
    ) -> PassOrder {
        match (out_w != src_w, out_h != src_h) {
            (false, false) => PassOrder::Copy,
            (true, false) => PassOrder::HorizontalOnly,
            (false, true) => PassOrder::VerticalOnly,
            (true, true) => {
                let dh = src_h as i64 - out_h as i64;
                let dw = src_w as i64 - out_w as i64;
                if vertical_first && out_h < src_h && dh > 2 * dw {
                    PassOrder::VerticalFirst
                } else {
                    PassOrder::HorizontalFirst
                }
            }
        }
    }
}

/// Rows of interleaved 8-bit pixels; `rows[i]` starts at source column `col0`.
pub struct Rows<'a> {
    pub rows: Vec<&'a [u8]>,
    /// Source row index of `rows[0]`.
    pub row0: usize,
    /// Source column index of each row's first pixel.
    pub col0: usize,
}

/// Round the 22-bit fixed-point sum back to a byte, clamping as Pillow's lookup table does.
#[inline(always)]
pub fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Half of one in 22-bit fixed point: Pillow's rounding bias.
pub const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over `src.rows` (pixels of `ps` bytes) for the outputs of `axis`, computing the
/// first `bands` bytes of each pixel (`bands <= ps`: RGB drops Pillow's fourth padding byte);
/// out has `rows.len() * axis.count() * bands` bytes.
pub fn horizontal_u8(
    src: &Rows<'_>,
    ps: usize,
    bands: usize,
    axis: &Axis,
    out: &mut [u8],
    simd: bool,
) {
    if simd && resample_simd::horizontal_u8(src, ps, bands, axis, out) {
        return;
    }
    horizontal_u8_scalar(src, ps, bands, axis, out);
}

/// [`horizontal_u8`] with the axis prepared once for many bands of rows (see
/// [`resample_simd::Prepared`]).
pub fn horizontal_u8_prepared(
    src: &Rows<'_>,
    ps: usize,
    bands: usize,
    axis: &Axis,
    prepared: &resample_simd::Prepared,
    out: &mut [u8],
    simd: bool,
) {
    if simd && resample_simd::horizontal_u8_prepared(src, ps, bands, axis, prepared, out) {
        return;
    }
    horizontal_u8_scalar(src, ps, bands, axis, out);
}

fn horizontal_u8_scalar(src: &Rows<'_>, ps: usize, bands: usize, axis: &Axis, out: &mut [u8]) {
    match (ps, bands) {
        (1, _) => horizontal_u8_ps::<1, 1>(src, axis, out),
        (2, _) => horizontal_u8_ps::<2, 2>(src, axis, out),
        (3, _) => horizontal_u8_ps::<3, 3>(src, axis, out),
        (_, 3) => horizontal_u8_ps::<4, 3>(src, axis, out),
        _ => horizontal_u8_ps::<4, 4>(src, axis, out),
    }
}

fn horizontal_u8_ps<const PS: usize, const BANDS: usize>(
    src: &Rows<'_>,
    axis: &Axis,
    out: &mut [u8],
) {
    let width = axis.count() * BANDS;
    for (row, dst) in src.rows.iter().zip(out.chunks_exact_mut(width)) {
        for slot in 0..axis.count() {
            let k = axis.fixed_of(slot);
            let first = (axis.start[slot] - src.col0) * PS;
            let window = &row[first..first + k.len() * PS];
            let mut acc = [HALF; BANDS];
            for (px, &w) in window.chunks_exact(PS).zip(k) {
                for c in 0..BANDS {
                    acc[c] += i32::from(px[c]) * w;
                }
            }
            for c in 0..BANDS {
                dst[slot * BANDS + c] = clip8(acc[c]);
            }
        }
    }
}

/// Vertical pass: for each output of `axis`, combine source rows over `cols` pixels starting at
/// pixel `first_col` of each row. out has `axis.count() * cols * ps` bytes.
pub fn vertical_u8(
    src: &Rows<'_>,
    ps: usize,
    axis: &Axis,
    first_col: usize,
    cols: usize,
    out: &mut [u8],
    simd: bool,
) {
    if simd && resample_simd::vertical_u8(src, ps, axis, first_col, cols, out) {
        return;
    }
    let width = cols * ps;
    let mut acc = vec![0i32; width];
    for (slot, dst) in out.chunks_exact_mut(width).enumerate() {
        acc.fill(HALF);
        let k = axis.fixed_of(slot);
        let base = axis.start[slot] - src.row0;
        for (i, &w) in k.iter().enumerate() {
            let row = &src.rows[base + i][first_col * ps..first_col * ps + width];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
}

/// A sample of the double-precision path (modes I, F and I;16).
pub trait WideSample: Copy + Default + Send + Sync {
    fn to_f64(self) -> f64;
    /// Store a pass result the way Pillow stores it for this mode.
    fn from_f64(v: f64) -> Self;
}

/// Pillow's ROUND_UP: add or subtract a half, then truncate toward zero.
fn round_up(v: f64) -> i32 {
    if v >= 0.0 {
        (v + 0.5) as i32
    } else {
        (v - 0.5) as i32
    }
}

impl WideSample for i32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> i32 {
        round_up(v)
    }
}

impl WideSample for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

/// I;16: Pillow 13 rounds like ROUND_UP and saturates to 0..=65535 (measured; older sources
/// clipped the two bytes separately).
impl WideSample for u16 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> u16 {
        round_up(v).clamp(0, 65535) as u16
    }
}

/// A single-band image of wide samples, row-major.
pub struct Plane<T> {
    pub data: Vec<T>,
    pub width: usize,
    pub height: usize,
    /// Source row and column of `data[0]`.
    pub row0: usize,
    pub col0: usize,
}

pub fn horizontal_wide<T: WideSample>(src: &Plane<T>, axis: &Axis) -> Plane<T> {
    let mut data = Vec::with_capacity(src.height * axis.count());
    for row in src.data.chunks_exact(src.width) {
        for slot in 0..axis.count() {
            let first = axis.start[slot] - src.col0;
            let window = &row[first..first + axis.len[slot]];
            let mut acc = 0.0f64;
            for (&p, &w) in window.iter().zip(axis.weights_of(slot)) {
                acc += p.to_f64() * w;
            }
            data.push(T::from_f64(acc));
        }
    }
    Plane {
        data,
        width: axis.count(),
        height: src.height,
        row0: src.row0,
        col0: 0,
    }
}

/// Vertical pass over columns `[first_col, first_col + cols)` of `src` (indices into its rows).
pub fn vertical_wide<T: WideSample>(
    src: &Plane<T>,
    axis: &Axis,
    first_col: usize,
    cols: usize,
) -> Plane<T> {
    let mut data = Vec::with_capacity(axis.count() * cols);
    for slot in 0..axis.count() {
        let base = axis.start[slot] - src.row0;
        for x in first_col..first_col + cols {
            let mut acc = 0.0f64;
            for (i, &w) in axis.weights_of(slot).iter().enumerate() {
                acc += src.data[(base + i) * src.width + x].to_f64() * w;
            }
            data.push(T::from_f64(acc));
        }
    }
    Plane {
        data,
        width: cols,
        height: axis.count(),
        row0: 0,
        col0: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_order_before_pillow_13_is_horizontal_first() {
        assert_eq!(
            PassOrder::choose_for(false, 300, 3000, 224, 2240),
            PassOrder::HorizontalFirst
        );
        assert_eq!(
            PassOrder::choose_for(false, 224, 300, 224, 200),
            PassOrder::VerticalOnly
        );
    }

    #[test]
    fn pass_order_rule() {
        assert_eq!(
            PassOrder::choose(300, 3000, 224, 2240),
            PassOrder::VerticalFirst
        );
        assert_eq!(
            PassOrder::choose(4000, 3000, 298, 224),
            PassOrder::HorizontalFirst
        );
        assert_eq!(PassOrder::choose(224, 300, 224, 300), PassOrder::Copy);
        assert_eq!(
            PassOrder::choose(224, 300, 224, 200),
            PassOrder::VerticalOnly
        );
        assert_eq!(
            PassOrder::choose(2, 3, 224, 336),
            PassOrder::HorizontalFirst
        );
    }

    #[test]
    fn i16_store_matches_pillow_rule() {
        assert_eq!(u16::from_f64(-3.0), 0);
        assert_eq!(u16::from_f64(70000.0), 65535);
        assert_eq!(u16::from_f64(513.4), 513);
        assert_eq!(i32::from_f64(-2.5), -3);
        assert_eq!(i32::from_f64(2.5), 3);
    }

    #[test]
    fn constant_image_stays_constant() {
        let row = [77u8; 50 * 3];
        let rows = Rows {
            rows: vec![&row[..]; 40],
            row0: 0,
            col0: 0,
        };
        let axis = Axis::bicubic(50, 17, 0..17);
        let mut out = vec![0u8; 40 * 17 * 3];
        horizontal_u8(&rows, 3, 3, &axis, &mut out, false);
        assert!(out.iter().all(|&v| v == 77));
        let vaxis = Axis::bicubic(40, 9, 0..9);
        let mut out2 = vec![0u8; 9 * 50 * 3];
        vertical_u8(&rows, 3, &vaxis, 0, 50, &mut out2, false);
        assert!(out2.iter().all(|&v| v == 77));
    }
}
