//! Writes tensors of a checkpoint into the data section of a new file (what `clipfast convert`
//! builds a safetensors file with), converting dtypes and laying each tensor out row-major, in
//! parallel, without torch.
//!
//! A piece copies one tensor of the source (any strides, optionally with its dimensions permuted:
//! a transpose) into a byte range of the output. Several pieces may fill one output tensor (q, k
//! and v one after another form `in_proj_weight`). Everything a piece names is checked against the
//! source and the output before anything is written.

use super::convert::convert_slice;
use super::{Contents, Dtype};
use crate::error::{Error, Result};
use std::path::Path;

/// Source bytes per unit of parallel work for contiguous pieces.
const CHUNK_BYTES: usize = 4 << 20;

/// One tensor of the source written at `dst_offset` (bytes into the output) as `dst_dtype`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub tensor: usize,
    pub dst_offset: usize,
    pub dst_dtype: Dtype,
    /// Output dimension `i` is source dimension `permutation[i]` (None: the source's order).
    pub permutation: Option<Vec<usize>>,
}

/// A checked piece: where each element comes from.
struct View {
    /// Byte offset of element 0 in the source.
    base: usize,
    shape: Vec<usize>,
    /// Element strides in the source, per output dimension.
    stride: Vec<usize>,
    src_dtype: Dtype,
    dst: std::ops::Range<usize>,
    dst_dtype: Dtype,
}

impl View {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements lie in the source in output order, one after another.
    fn contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(n);
        }
        true
    }
}

fn check(
    path: &Path,
    contents: &Contents,
    src_len: usize,
    out_len: usize,
    piece: &Piece,
) -> Result<View> {
    let fail = |msg: String| Error::checkpoint(path, format!("export: {msg}"));
    let tensor = contents
        .tensors
        .get(piece.tensor)
        .ok_or_else(|| fail(format!("no tensor {}", piece.tensor)))?;
    let storage = contents
        .storages
        .get(tensor.storage)
        .ok_or_else(|| fail(format!("tensor {:?} has no storage", tensor.name)))?;
    if storage.bytes.end > src_len || storage.bytes.start > storage.bytes.end {
        return Err(fail(format!(
            "tensor {:?} does not lie in the file (a deflated or byte-swapped npz member cannot be exported)",
            tensor.name
        )));
    }
    let ndim = tensor.shape.len();
    let order: Vec<usize> = match &piece.permutation {
        None => (0..ndim).collect(),
        Some(p) => {
            let mut seen = vec![false; ndim];
            for &d in p {
                if d >= ndim || std::mem::replace(&mut seen[d], true) {
                    return Err(fail(format!("permutation {p:?} of a {ndim}-d tensor")));
                }
            }
            if p.len() != ndim {
                return Err(fail(format!("permutation {p:?} of a {ndim}-d tensor")));
            }
            p.clone()
        }
    };
    let mut shape = Vec::with_capacity(ndim);
    let mut stride = Vec::with_capacity(ndim);
    for &d in &order {
        let n = usize::try_from(tensor.shape[d])
            .map_err(|_| fail(format!("tensor {:?}: negative size", tensor.name)))?;
        let s = usize::try_from(tensor.stride[d])
            .map_err(|_| fail(format!("tensor {:?}: negative stride", tensor.name)))?;
        shape.push(n);
        stride.push(s);
    }
    let itemsize = tensor.dtype.itemsize();
    let offset = usize::try_from(tensor.storage_offset)
        .map_err(|_| fail(format!("tensor {:?}: negative storage offset", tensor.name)))?;
    let numel = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    let last = shape.iter().zip(&stride).try_fold(offset, |a, (&n, &s)| {
        a.checked_add(n.saturating_sub(1).checked_mul(s)?)
    });
    let (Some(numel), Some(last)) = (numel, last) else {
        return Err(fail(format!("tensor {:?}: sizes overflow", tensor.name)));
    };
    let storage_elems = storage.bytes.len() / itemsize;
    if numel > 0 && last >= storage_elems {
        return Err(fail(format!(
            "tensor {:?} reaches past its storage",
            tensor.name
        )));
    }
    let dst_len = numel
        .checked_mul(piece.dst_dtype.itemsize())
        .ok_or_else(|| fail("output size overflows".into()))?;
    let dst_end = piece
        .dst_offset
        .checked_add(dst_len)
        .filter(|&e| e <= out_len)
        .ok_or_else(|| {
            fail(format!(
                "tensor {:?} does not fit in the output",
                tensor.name
            ))
        })?;
    let probe_src = [0u8; 16];
    let mut probe_dst = [0u64; 2]; // aligned for every dtype
                                   // SAFETY: a u64 array viewed as its 16 bytes.
    let probe = unsafe { std::slice::from_raw_parts_mut(probe_dst.as_mut_ptr().cast::<u8>(), 16) };
    if !convert_slice(
        &probe_src[..itemsize],
        tensor.dtype,
        &mut probe[..piece.dst_dtype.itemsize()],
        piece.dst_dtype,
    ) {
        return Err(fail(format!(
            "tensor {:?}: no conversion from {} to {}",
            tensor.name,
            tensor.dtype.torch_name(),
            piece.dst_dtype.torch_name()
        )));
    }
    Ok(View {
        base: storage.bytes.start + offset * itemsize,
        shape,
        stride,
        src_dtype: tensor.dtype,
        dst: piece.dst_offset..dst_end,
        dst_dtype: piece.dst_dtype,
    })
}

/// A unit of parallel work: elements `elems` (in output order) of view `view`.
struct Work {
    view: usize,
    elems: std::ops::Range<usize>,
}

/// Fills `out` (the output's data section) from `src` (the source file's bytes). Each destination
/// must lie at an address aligned to its dtype and no two may overlap (both are checked).
pub fn fill(
    path: &Path,
    contents: &Contents,
    src: &[u8],
    out: &mut [u8],
    pieces: &[Piece],
) -> Result<()> {
    let fail = |msg: String| Error::checkpoint(path, format!("export: {msg}"));
    let views = pieces
        .iter()
        .map(|p| check(path, contents, src.len(), out.len(), p))
        .collect::<Result<Vec<_>>>()?;
    let mut spans: Vec<_> = views.iter().map(|v| (v.dst.start, v.dst.end)).collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(fail("output ranges overlap".into()));
    }
    let base = out.as_ptr() as usize;
    if views
        .iter()
        .any(|v| !(base + v.dst.start).is_multiple_of(v.dst_dtype.itemsize()))
    {
        return Err(fail("an output tensor is not aligned to its dtype".into()));
    }
    let mut work = Vec::new();
    for (i, v) in views.iter().enumerate() {
        let n = v.numel();
        let step = if v.contiguous() {
            (CHUNK_BYTES / v.src_dtype.itemsize()).max(1)
        } else {
            n.max(1)
        };
        let mut start = 0;
        while start < n {
            let end = (start + step).min(n);
            work.push(Work {
                view: i,
                elems: start..end,
            });
            start = end;
        }
    }
    let out_addr = base;
    let failed = std::sync::atomic::AtomicBool::new(false);
    crate::parallel::for_each(work, |w| {
        let v = &views[w.view];
        let (si, di) = (v.src_dtype.itemsize(), v.dst_dtype.itemsize());
        // SAFETY: the view's output range was checked to lie inside `out`, output ranges do not
        // overlap, and the units of one view cover disjoint element ranges: no two threads write
        // the same bytes, and `out` outlives the loop (for_each joins its threads).
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                (out_addr + v.dst.start + w.elems.start * di) as *mut u8,
                w.elems.len() * di,
            )
        };
        let ok = if v.contiguous() {
            let start = v.base + w.elems.start * si;
            convert_slice(
                &src[start..start + w.elems.len() * si],
                v.src_dtype,
                dst,
                v.dst_dtype,
            )
        } else {
            strided(v, src, dst, w.elems.clone())
        };
        if !ok {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if failed.into_inner() {
        return Err(fail("dtype conversion failed".into()));
    }
    Ok(())
}

/// Elements `elems` of a strided view, one at a time (transposes are small: projections).
fn strided(v: &View, src: &[u8], dst: &mut [u8], elems: std::ops::Range<usize>) -> bool {
    let (si, di) = (v.src_dtype.itemsize(), v.dst_dtype.itemsize());
    let ndim = v.shape.len();
    let mut index = vec![0usize; ndim];
    // The multi-index of the first element.
    let mut rest = elems.start;
    for d in (0..ndim).rev() {
        index[d] = rest % v.shape[d].max(1);
        rest /= v.shape[d].max(1);
    }
    for (k, _) in elems.enumerate() {
        let offset: usize = index.iter().zip(&v.stride).map(|(&i, &s)| i * s).sum();
        let at = v.base + offset * si;
        if !convert_slice(
            &src[at..at + si],
            v.src_dtype,
            &mut dst[k * di..(k + 1) * di],
            v.dst_dtype,
        ) {
            return false;
        }
        for d in (0..ndim).rev() {
            index[d] += 1;
            if index[d] < v.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::{Format, Storage, Tensor};
    use super::*;

    fn contents(
        shape: Vec<i64>,
        stride: Vec<i64>,
        dtype: Dtype,
        bytes: std::ops::Range<usize>,
    ) -> Contents {
        Contents {
            format: Format::Safetensors,
            storages: vec![Storage {
                key: "s".into(),
                dtype,
                bytes,
            }],
            tensors: vec![Tensor {
                name: "t".into(),
                dtype,
                shape,
                stride,
                storage: 0,
                storage_offset: 0,
                requires_grad: false,
                is_parameter: false,
            }],
            unmapped: Vec::new(),
        }
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn aligned(len: usize) -> Vec<u64> {
        vec![0u64; len.div_ceil(8)]
    }

    fn as_bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: a u64 slice viewed as its bytes.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8) }
    }

    #[test]
    fn copies_converts_and_transposes() {
        let src = floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let c = contents(vec![2, 3], vec![3, 1], Dtype::F32, 0..24);
        let mut out = aligned(24 + 12);
        let pieces = [
            Piece {
                tensor: 0,
                dst_offset: 0,
                dst_dtype: Dtype::F32,
                permutation: Some(vec![1, 0]),
            },
            Piece {
                tensor: 0,
                dst_offset: 24,
                dst_dtype: Dtype::F16,
                permutation: None,
            },
        ];
        fill(
            Path::new("x"),
            &c,
            &src,
            &mut as_bytes(&mut out)[..36],
            &pieces,
        )
        .unwrap();
        let bytes = as_bytes(&mut out);
        let t: Vec<f32> = bytes[..24]
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(t, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let h: Vec<f32> = bytes[24..36]
            .chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(h, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let src = floats(&[1.0, 2.0, 3.0, 4.0]);
        let mut out = aligned(32);
        let ok = contents(vec![2, 2], vec![2, 1], Dtype::F32, 0..16);
        let bad = [
            (
                contents(vec![3, 2], vec![2, 1], Dtype::F32, 0..16),
                Piece {
                    tensor: 0,
                    dst_offset: 0,
                    dst_dtype: Dtype::F32,
                    permutation: None,
                },
            ),
            (
                contents(vec![2, 2], vec![2, 1], Dtype::F32, 0..64),
                Piece {
                    tensor: 0,
                    dst_offset: 0,
                    dst_dtype: Dtype::F32,
                    permutation: None,
                },
            ),
            (
                ok.clone(),
                Piece {
                    tensor: 1,
                    dst_offset: 0,
                    dst_dtype: Dtype::F32,
                    permutation: None,
                },
            ),
            (
                ok.clone(),
                Piece {
                    tensor: 0,
                    dst_offset: 24,
                    dst_dtype: Dtype::F32,
                    permutation: None,
                },
            ),
            (
                ok.clone(),
                Piece {
                    tensor: 0,
                    dst_offset: 2,
                    dst_dtype: Dtype::F32,
                    permutation: None,
                },
            ),
            (
                ok.clone(),
                Piece {
                    tensor: 0,
                    dst_offset: 0,
                    dst_dtype: Dtype::F32,
                    permutation: Some(vec![0, 0]),
                },
            ),
            (
                ok.clone(),
                Piece {
                    tensor: 0,
                    dst_offset: 0,
                    dst_dtype: Dtype::I64,
                    permutation: None,
                },
            ),
        ];
        for (c, piece) in bad {
            assert!(
                fill(
                    Path::new("x"),
                    &c,
                    &src,
                    as_bytes(&mut out),
                    std::slice::from_ref(&piece)
                )
                .is_err(),
                "{piece:?}"
            );
        }
        let overlapping = [
            Piece {
                tensor: 0,
                dst_offset: 0,
                dst_dtype: Dtype::F32,
                permutation: None,
            },
            Piece {
                tensor: 0,
                dst_offset: 8,
                dst_dtype: Dtype::F32,
                permutation: None,
            },
        ];
        assert!(fill(Path::new("x"), &ok, &src, as_bytes(&mut out), &overlapping).is_err());
    }
}
