//! One image through resize, crop and RGB conversion, computing only the pixels the crop keeps.

use super::coeffs::Axis;
use super::crop::Geometry;
use super::pixels::{premultiply, unpremultiply, Mode, Source};
use super::resample::{
    horizontal_u8, horizontal_u8_prepared, horizontal_wide, vertical_u8, vertical_wide, PassOrder,
    Plane, Rows, WideSample,
};
use super::resample_simd::Prepared;
use super::scratch::Scratch;
use std::ops::Range;
use std::rc::Rc;

/// Source rows and columns the kept outputs read.
fn source_window(g: &Geometry, h: Option<&Axis>, v: Option<&Axis>) -> (Range<usize>, Range<usize>) {
    let rows = match v {
        Some(axis) => axis.span(),
        None => g.kept_rows(),
    };
    let cols = match h {
        Some(axis) => axis.span(),
        None => g.kept_cols(),
    };
    (rows, cols)
}

fn axes(g: &Geometry) -> (Option<Rc<Axis>>, Option<Rc<Axis>>) {
    let h = (g.out_w != g.src_w).then(|| Axis::bicubic_shared(g.src_w, g.out_w, g.kept_cols()));
    let v = (g.out_h != g.src_h).then(|| Axis::bicubic_shared(g.src_h, g.out_h, g.kept_rows()));
    (h, v)
}

/// Bytes of each pixel of `mode` that hold a band: RGB's fourth (padding) byte is dropped.
fn kept_bytes(mode: Mode, ps: usize) -> usize {
    if mode == Mode::Rgb {
        3
    } else {
        ps
    }
}

/// The resize's axes for one geometry, and the source rows and columns its kept outputs read.
pub struct Plan {
    h: Option<Rc<Axis>>,
    v: Option<Rc<Axis>>,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

impl Plan {
    pub fn new(g: &Geometry) -> Plan {
        let (h, v) = axes(g);
        let (rows, cols) = source_window(g, h.as_deref(), v.as_deref());
        Plan { h, v, rows, cols }
    }
}

/// Resize + crop an 8-bit image; returns n x n pixels (alpha un-premultiplied) and their size in
/// bytes: `src.ps`, or 3 for RGB (Pillow's padding byte dropped).
pub fn resize_crop_u8(src: &Source<'_>, g: &Geometry, simd: bool) -> (Scratch<u8>, usize) {
    let plan = Plan::new(g);
    let window = src.window(plan.rows.clone(), plan.cols.clone());
    resize_window_u8(&plan, window, src.ps, src.mode, g, simd)
}

/// [`resize_crop_u8`] on the source window alone: `window` holds rows `plan.rows`, each starting
/// at column `plan.cols.start` (a decoder may produce only these).
pub fn resize_window_u8(
    plan: &Plan,
    window: Vec<&[u8]>,
    ps: usize,
    mode: Mode,
    g: &Geometry,
    simd: bool,
) -> (Scratch<u8>, usize) {
    let kept = kept_bytes(mode, ps);
    let n = g.n;
    let (h, v) = (plan.h.as_deref(), plan.v.as_deref());
    let (wrows, wcols) = (plan.rows.clone(), plan.cols.clone());
    // Pillow premultiplies only when it resamples; a same-size image is merely cropped.
    let premultiply_alpha = mode.has_alpha() && g.order != PassOrder::Copy;
    let mut premultiplied: Scratch<u8>;
    let window: Vec<&[u8]> = if premultiply_alpha {
        let stride = wcols.len() * ps;
        premultiplied = Scratch::any(window.len() * stride);
        for (dst, r) in premultiplied.chunks_exact_mut(stride).zip(&window) {
            premultiply(&r[..stride], ps, dst);
        }
        premultiplied.chunks_exact(stride).collect()
    } else {
        window
    };
    let rows = Rows {
        rows: window,
        row0: wrows.start,
        col0: wcols.start,
    };
    // A horizontal pass writes only the kept bytes; a vertical pass on the source and the plain
    // crop keep the source's pixel size (both run on whole rows of bytes).
    let out_ps = match g.order {
        PassOrder::VerticalOnly | PassOrder::Copy => ps,
        _ => kept,
    };
    let mut out = Scratch::any(n * n * out_ps);
    match (g.order, h, v) {
        (PassOrder::HorizontalOnly, Some(h), _) => {
            horizontal_u8(&rows, ps, kept, h, &mut out, simd)
        }
        (PassOrder::VerticalOnly, _, Some(v)) => vertical_u8(&rows, ps, v, 0, n, &mut out, simd),
        (PassOrder::HorizontalFirst, Some(h), Some(v)) => {
            let mut tmp = Scratch::any(rows.rows.len() * n * kept);
            horizontal_u8(&rows, ps, kept, h, &mut tmp, simd);
            vertical_after_horizontal(&tmp, rows.row0, kept, v, n, &mut out, simd);
        }
        (PassOrder::VerticalFirst, Some(h), Some(v)) => {
            let cols = wcols.len();
            let mut tmp = Scratch::any(n * cols * ps);
            vertical_u8(&rows, ps, v, 0, cols, &mut tmp, simd);
            let mid = Rows {
                rows: tmp.chunks_exact(cols * ps).collect(),
                row0: 0,
                col0: wcols.start,
            };
            horizontal_u8(&mid, ps, kept, h, &mut out, simd);
        }
        _ => {
            // Same size: the crop alone (the window is exactly the kept region).
            for (dst, row) in out.chunks_exact_mut(n * ps).zip(&rows.rows) {
                dst.copy_from_slice(&row[..n * ps]);
            }
        }
    }
    if premultiply_alpha {
        unpremultiply(&mut out, out_ps);
    }
    (out, out_ps)
}

/// The vertical pass over a horizontal pass's output `mid` (rows of `n` pixels of `kept` bytes,
/// the first being source row `row0`) into the n x n `out`.
fn vertical_after_horizontal(
    mid: &[u8],
    row0: usize,
    kept: usize,
    v: &Axis,
    n: usize,
    out: &mut [u8],
    simd: bool,
) {
    let rows = Rows {
        rows: mid.chunks_exact(n * kept).collect(),
        row0,
        col0: 0,
    };
    vertical_u8(&rows, kept, v, 0, n, out, simd);
}

/// Window rows the horizontal pass takes per step when they come from a decoder: few enough that
/// the decoded band stays in cache between the decoder writing it and the pass reading it.
const STREAM_ROWS: usize = 16;

/// Whether [`resize_streamed_u8`] applies: a horizontal pass on the source (no alpha to
/// premultiply), so that source rows can be resized as they arrive.
pub fn streams(g: &Geometry, mode: Mode) -> bool {
    !mode.has_alpha()
        && matches!(
            g.order,
            PassOrder::HorizontalFirst | PassOrder::HorizontalOnly
        )
}

/// [`resize_window_u8`] with the window's rows arriving in order: `fill(buf, count)` writes the
/// next `count` rows of the window (each `plan.cols.len() * ps` bytes, from column
/// `plan.cols.start`) into `buf`. Only [`STREAM_ROWS`] source rows are held at once. Requires
/// [`streams`].
pub fn resize_streamed_u8(
    plan: &Plan,
    ps: usize,
    mode: Mode,
    g: &Geometry,
    simd: bool,
    mut fill: impl FnMut(&mut [u8], usize) -> Result<(), String>,
) -> Result<(Scratch<u8>, usize), String> {
    let kept = kept_bytes(mode, ps);
    let n = g.n;
    let h = plan.h.as_deref().ok_or("no horizontal pass to stream")?;
    let stride = plan.cols.len() * ps;
    let out_row = n * kept;
    let mut band = Scratch::any(STREAM_ROWS * stride);
    let mut mid = Scratch::any(plan.rows.len() * out_row);
    let prepared = Prepared::new(h, plan.cols.start, ps);
    for (i, dst) in mid.chunks_mut(STREAM_ROWS * out_row).enumerate() {
        let count = dst.len() / out_row;
        let buf = &mut band[..count * stride];
        fill(buf, count)?;
        let rows = Rows {
            rows: buf.chunks_exact(stride).collect(),
            row0: plan.rows.start + i * STREAM_ROWS,
            col0: plan.cols.start,
        };
        horizontal_u8_prepared(&rows, ps, kept, h, &prepared, dst, simd);
    }
    match (g.order, plan.v.as_deref()) {
        (PassOrder::HorizontalOnly, _) => Ok((mid, kept)),
        (PassOrder::HorizontalFirst, Some(v)) => {
            let mut out = Scratch::any(n * out_row);
            vertical_after_horizontal(&mid, plan.rows.start, kept, v, n, &mut out, simd);
            Ok((out, kept))
        }
        _ => Err("this resize does not start with a horizontal pass".into()),
    }
}

/// Resize + crop a single-band wide image (I, F, I;16) in double precision.
pub fn resize_crop_wide<T: WideSample>(
    src: &Source<'_>,
    g: &Geometry,
    decode: impl Fn(&[u8]) -> T,
) -> Vec<T> {
    let (h, v) = axes(g);
    let (wrows, wcols) = source_window(g, h.as_deref(), v.as_deref());
    let width = wcols.len();
    let data: Vec<T> = src
        .window(wrows.clone(), wcols.clone())
        .iter()
        .flat_map(|r| r.chunks_exact(src.ps).map(&decode))
        .collect();
    let plane = Plane {
        data,
        width,
        height: wrows.len(),
        row0: wrows.start,
        col0: wcols.start,
    };
    let n = g.n;
    let out = match (g.order, h.as_deref(), v.as_deref()) {
        (PassOrder::HorizontalOnly, Some(h), _) => horizontal_wide(&plane, h),
        (PassOrder::VerticalOnly, _, Some(v)) => vertical_wide(&plane, v, 0, n),
        (PassOrder::HorizontalFirst, Some(h), Some(v)) => {
            let mid = horizontal_wide(&plane, h);
            vertical_wide(&mid, v, 0, n)
        }
        (PassOrder::VerticalFirst, Some(h), Some(v)) => {
            let mut mid = vertical_wide(&plane, v, 0, width);
            mid.col0 = wcols.start;
            horizontal_wide(&mid, h)
        }
        _ => plane,
    };
    out.data
}

/// Resize + crop in the image's own mode; returns the packed n x n result
/// (8-bit modes in `src.ps` bytes per pixel, I and F native-endian, I;16 little-endian).
pub fn resize_crop_native(src: &Source<'_>, g: &Geometry, simd: bool) -> Vec<u8> {
    match src.mode {
        Mode::I => resize_crop_wide(src, g, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        Mode::F => resize_crop_wide(src, g, |b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        Mode::I16 => resize_crop_wide(src, g, |b| u16::from_le_bytes([b[0], b[1]]))
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        mode => {
            let (px, ps) = resize_crop_u8(src, g, simd);
            pack(mode, ps, px.into_vec())
        }
    }
}

/// Pillow's 4-byte pixels of LA and RGB -> the packed form (`Image.tobytes()` layout).
fn pack(mode: Mode, ps: usize, px: Vec<u8>) -> Vec<u8> {
    if ps == mode.packed_size() {
        return px;
    }
    match mode {
        Mode::LA => px
            .chunks_exact(ps)
            .flat_map(|p| [p[0], p[ps - 1]])
            .collect(),
        _ => px
            .chunks_exact(ps)
            .flat_map(|p| p[..mode.packed_size()].iter().copied())
            .collect(),
    }
}

/// Which bytes of a pixel are red, green and blue after Pillow's `convert("RGB")`: L and LA
/// repeat the grey band, RGB and RGBA drop the rest. `None` for modes Pillow converts (CMYK).
pub fn rgb_bytes(mode: Mode) -> Option<[usize; 3]> {
    match mode {
        Mode::L | Mode::LA => Some([0, 0, 0]),
        Mode::Rgb | Mode::Rgba => Some([0, 1, 2]),
        _ => None,
    }
}
