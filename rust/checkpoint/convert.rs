//! Fills destination buffers from storages in the map, converting dtypes, in parallel.
//!
//! Work is cut into chunks of about `CHUNK_BYTES` of source, taken in file order; once a chunk
//! is converted its source pages are dropped from the map (`MADV_DONTNEED`) so the fp16 file
//! does not stay resident beside the fp32 weights (the pages remain in the page cache, not in
//! our RSS).
//!
//! When the file is not in the page cache (the first load after a download or a reboot), a
//! reader thread keeps the disk busy ahead of the converters: it asks the kernel to read the
//! next `READ_AHEAD` bytes (`MADV_WILLNEED`, asynchronous, in small `READ_STEP` pieces) so that the
//! converters find their pages read instead of each waiting on the faults of its own chunk, and
//! reading overlaps with converting (and with faulting in the fresh destination pages).
use super::widen_simd;
use super::Dtype;
use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Source bytes per unit of parallel work: large enough to amortize scheduling, small enough to
/// balance two cores and bound what is resident at once.
const CHUNK_BYTES: usize = 4 << 20;

const PAGE: usize = 4096;

/// How far the reader runs ahead of the converters (bytes of file): enough to keep the disk's
/// queue full, bounded so that pages read ahead are not evicted before use under memory pressure.
const READ_AHEAD: usize = 128 << 20;

/// The reader's unit of work: one `MADV_WILLNEED` call. Small, because the kernel reads at most
/// max(read_ahead_kb, max_sectors_kb) of each call's range (force_page_cache_ra) and drops the
/// rest: with 16 MiB steps only the first 8 MiB of each were read here (read_ahead_kb 8192) and a
/// cold load cost the read plus the warm load; 128 KiB is the smallest default of either.
const READ_STEP: usize = 128 << 10;

/// How much the reader checks before advising it (a warm file needs nothing).
const RESIDENT_STEP: usize = 16 << 20;

/// The distance between the pages whose residency stands for a step's (see `resident`): the
/// kernel reads a file into the page cache and evicts it in runs of pages, not page by page.
const RESIDENT_SAMPLE: usize = 1 << 20;

/// One storage to fill.
#[derive(Debug, Clone)]
pub struct Job {
    pub src: Range<usize>,
    pub src_dtype: Dtype,
    pub dst_address: usize,
    pub dst_len: usize,
    pub dst_dtype: Dtype,
}

/// Element types that any bit pattern is a valid value of.
///
/// # Safety
/// Implementors must be plain data with no invalid bit patterns and no padding.
unsafe trait Plain: Copy + Default + Send + Sync + 'static {}
// SAFETY: IEEE floats and their 16-bit forms accept every bit pattern and have no padding.
unsafe impl Plain for f16 {}
// SAFETY: as above.
unsafe impl Plain for bf16 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f64 {}

/// `bytes` as a slice of `T`, borrowed when aligned, copied otherwise.
fn typed<T: Plain>(bytes: &[u8]) -> std::borrow::Cow<'_, [T]> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `T: Plain` accepts every bit pattern; align_to only reinterprets the aligned middle.
    let (head, mid, tail) = unsafe { bytes.align_to::<T>() };
    if head.is_empty() && tail.is_empty() {
        return std::borrow::Cow::Borrowed(mid);
    }
    let mut out = vec![T::default(); bytes.len() / size];
    // SAFETY: `out` holds exactly bytes.len() / size elements of size `size`, and the two
    // buffers cannot overlap (one is freshly allocated).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr().cast::<u8>(),
            out.len() * size,
        );
    }
    std::borrow::Cow::Owned(out)
}

/// `bytes` as a mutable slice of `T`; the destination must be aligned (torch allocations are).
fn typed_mut<T: Plain>(bytes: &mut [u8]) -> Option<&mut [T]> {
    // SAFETY: `T: Plain` accepts every bit pattern; only the aligned middle is reinterpreted.
    let (head, mid, tail) = unsafe { bytes.align_to_mut::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// Converts `src` (elements of `from`) into `dst` (the same number of elements of `to`).
/// Returns false for a pair of dtypes it does not convert.
pub(super) fn convert_slice(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) -> bool {
    if from == to {
        dst.copy_from_slice(src);
        return true;
    }
    macro_rules! pair {
        ($S:ty, $D:ty, |$s:ident, $d:ident| $body:expr) => {{
            let $s = typed::<$S>(src);
            let Some($d) = typed_mut::<$D>(dst) else {
                return false;
            };
            $body;
            true
        }};
    }
    match (from, to) {
        (Dtype::F16, Dtype::F32) => pair!(f16, f32, |s, d| {
            if !widen_simd::f16_to_f32(s.reinterpret_cast(), d) {
                s.convert_to_f32_slice(d)
            }
        }),
        (Dtype::BF16, Dtype::F32) => pair!(bf16, f32, |s, d| {
            let bits: &[u16] = s.reinterpret_cast();
            if !widen_simd::bf16_to_f32(bits, d) {
                d.iter_mut()
                    .zip(bits)
                    .for_each(|(d, b)| *d = widen_simd::bf16_bits_to_f32(*b))
            }
        }),
        (Dtype::F32, Dtype::F16) => pair!(f32, f16, |s, d| d.convert_from_f32_slice(&s)),
        (Dtype::F32, Dtype::BF16) => pair!(f32, bf16, |s, d| d.convert_from_f32_slice(&s)),
        (Dtype::F16, Dtype::F64) => pair!(f16, f64, |s, d| s.convert_to_f64_slice(d)),
        (Dtype::BF16, Dtype::F64) => pair!(bf16, f64, |s, d| s.convert_to_f64_slice(d)),
        // Through f32, as torch converts double to half/bfloat16 (two roundings, bit-identical).
        (Dtype::F64, Dtype::F16) => pair!(f64, f16, |s, d| {
            d.iter_mut()
                .zip(s.iter())
                .for_each(|(d, s)| *d = f16::from_f32(*s as f32))
        }),
        (Dtype::F64, Dtype::BF16) => pair!(f64, bf16, |s, d| {
            d.iter_mut()
                .zip(s.iter())
                .for_each(|(d, s)| *d = bf16::from_f32(*s as f32))
        }),
        (Dtype::F32, Dtype::F64) => pair!(f32, f64, |s, d| {
            d.iter_mut()
                .zip(s.iter())
                .for_each(|(d, s)| *d = f64::from(*s))
        }),
        (Dtype::F64, Dtype::F32) => pair!(f64, f32, |s, d| {
            d.iter_mut().zip(s.iter()).for_each(|(d, s)| *d = *s as f32)
        }),
        (Dtype::F16, Dtype::BF16) => pair!(f16, bf16, |s, d| {
            d.iter_mut()
                .zip(s.iter())
                .for_each(|(d, s)| *d = bf16::from_f32(s.to_f32()))
        }),
        (Dtype::BF16, Dtype::F16) => pair!(bf16, f16, |s, d| {
            d.iter_mut()
                .zip(s.iter())
                .for_each(|(d, s)| *d = f16::from_f32(s.to_f32()))
        }),
        _ => false,
    }
}

/// A piece of one job: elements `elems` of job `job`.
struct Piece {
    job: usize,
    elems: Range<usize>,
}

/// Fills every job's destination from `map` (the map of `file`).
pub fn run(path: &Path, file: &File, map: &Mmap, jobs: &[Job]) -> Result<()> {
    let fail = |msg: String| Error::checkpoint(path, msg);
    let mut pieces = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let (si, di) = (job.src_dtype.itemsize(), job.dst_dtype.itemsize());
        if job.src.start > job.src.end || job.src.end > map.len() {
            return Err(fail(format!(
                "conversion source {:?} lies outside the file",
                job.src
            )));
        }
        let count = job.src.len() / si;
        if job.src.len() % si != 0 || count.checked_mul(di) != Some(job.dst_len) {
            return Err(fail(format!(
                "conversion of {} bytes of {} into {} bytes of {} does not match",
                job.src.len(),
                job.src_dtype.torch_name(),
                job.dst_len,
                job.dst_dtype.torch_name()
            )));
        }
        if job.dst_len > 0 && (job.dst_address == 0 || job.dst_address % di != 0) {
            return Err(fail("conversion destination is null or misaligned".into()));
        }
        let probe_src = [0u8; 16];
        let mut probe_dst = [0u8; 16];
        // Check the dtype pair is supported before any work starts.
        if !convert_slice(
            &probe_src[..si],
            job.src_dtype,
            &mut probe_dst[..di],
            job.dst_dtype,
        ) {
            return Err(fail(format!(
                "no conversion from {} to {}",
                job.src_dtype.torch_name(),
                job.dst_dtype.torch_name()
            )));
        }
        let per_chunk = (CHUNK_BYTES / si).max(1);
        let mut start = 0;
        while start < count {
            let end = (start + per_chunk).min(count);
            pieces.push(Piece {
                job: index,
                elems: start..end,
            });
            start = end;
        }
    }
    // In file order, so that the disk reads sequentially and the reader can stay ahead.
    pieces
        .sort_by_key(|p| jobs[p.job].src.start + p.elems.start * jobs[p.job].src_dtype.itemsize());
    let spans = source_spans(jobs, &pieces);
    let failed = AtomicBool::new(false);
    let unreadable = AtomicBool::new(false);
    let frontier = Frontier::default();
    std::thread::scope(|scope| {
        scope.spawn(|| read_ahead(map, &spans, &frontier));
        crate::parallel::for_each(pieces, |piece| {
            if failed.load(Ordering::Relaxed) || unreadable.load(Ordering::Relaxed) {
                return;
            }
            let job = &jobs[piece.job];
            let (si, di) = (job.src_dtype.itemsize(), job.dst_dtype.itemsize());
            let src_range =
                job.src.start + piece.elems.start * si..job.src.start + piece.elems.end * si;
            frontier.reached(src_range.end);
            // SAFETY: `dst_address` addresses `dst_len` bytes of a contiguous CPU tensor that is
            // held until this returns (by CheckpointReader.convert, or by the Conversion that
            // convert_into returns, which joins this thread before letting the tensor go);
            // destinations were checked not to overlap, and the pieces of one job cover disjoint
            // element ranges, so no two threads write the same bytes.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    (job.dst_address + piece.elems.start * di) as *mut u8,
                    piece.elems.len() * di,
                )
            };
            prefault(dst);
            if job.src_dtype == job.dst_dtype {
                // A plain copy: pread() from the page cache straight into the destination, which
                // spares mapping (and unmapping) the source pages; a file cut short since it
                // was opened is an error here, not a SIGBUS.
                if copy_from_file(file, src_range.start, dst).is_err() {
                    unreadable.store(true, Ordering::Relaxed);
                }
                return;
            }
            let src = &map[src_range.clone()];
            let ok = convert_slice(src, job.src_dtype, dst, job.dst_dtype);
            release(map, &src_range);
            if !ok {
                failed.store(true, Ordering::Relaxed);
            }
        });
        frontier.finish();
    });
    if failed.into_inner() {
        return Err(fail(
            "dtype conversion failed (misaligned destination)".into(),
        ));
    }
    if unreadable.into_inner() {
        return Err(fail(
            "could not read the tensor data (was the file truncated while loading?)".into(),
        ));
    }
    Ok(())
}

/// Reads `dst.len()` bytes of `file` at `offset` into `dst`.
#[cfg(unix)]
fn copy_from_file(file: &File, offset: usize, dst: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(dst, offset as u64)
}

#[cfg(windows)]
fn copy_from_file(file: &File, mut offset: usize, mut dst: &mut [u8]) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !dst.is_empty() {
        match file.seek_read(dst, offset as u64)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                dst = &mut dst[n..];
                offset += n;
            }
        }
    }
    Ok(())
}

/// The source bytes the pieces read, in file order, adjacent ranges joined.
fn source_spans(jobs: &[Job], pieces: &[Piece]) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for piece in pieces {
        let job = &jobs[piece.job];
        let si = job.src_dtype.itemsize();
        let range = job.src.start + piece.elems.start * si..job.src.start + piece.elems.end * si;
        match spans.last_mut() {
            // Zip headers between storages are small: read through them.
            Some(last) if range.start >= last.start && range.start <= last.end + PAGE => {
                last.end = last.end.max(range.end);
            }
            _ => spans.push(range),
        }
    }
    spans
}

/// How far the converters have got: the end of the furthest source chunk taken.
#[derive(Default)]
struct Frontier {
    reached: AtomicUsize,
    done: AtomicBool,
}

impl Frontier {
    fn reached(&self, offset: usize) {
        self.reached.fetch_max(offset, Ordering::Release);
    }
    fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Waits until `offset` is within `READ_AHEAD` of the converters; false once they are done.
    fn wait_until_near(&self, offset: usize) -> bool {
        loop {
            if self.done.load(Ordering::Acquire) {
                return false;
            }
            if offset < self.reached.load(Ordering::Acquire) + READ_AHEAD {
                return true;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Asks the kernel to read `spans` ahead of the converters, at most `READ_AHEAD` bytes beyond
/// the frontier, until the spans are covered or the converters are done.
///
/// A step already in the page cache needs nothing, however far ahead of the converters it lies, so
/// residency is checked before waiting for the frontier: on a warm file the thread checks the whole
/// file at once and ends, where following the converters (a wake-up every 500 µs on cores they
/// keep busy) cost a warm RN50 load ~6 ms (2026-12-08, 2-core AMD EPYC VM).
fn read_ahead(map: &Mmap, spans: &[Range<usize>], frontier: &Frontier) {
    for span in spans {
        let mut at = span.start;
        while at < span.end {
            let end = (at + RESIDENT_STEP).min(span.end);
            if !resident(map, at..end) {
                if !frontier.wait_until_near(at) {
                    return;
                }
                for step in (at..end).step_by(READ_STEP) {
                    will_need(map, step..(step + READ_STEP).min(end));
                }
            }
            at = end;
        }
    }
}

/// Starts reading `range` of the file into the page cache without waiting for it.
#[cfg(unix)]
fn will_need(map: &Mmap, range: Range<usize>) {
    // Advice only: a failure costs speed, never correctness.
    let _ = map.advise_range(memmap2::Advice::WillNeed, range.start, range.len());
}

#[cfg(not(unix))]
fn will_need(_map: &Mmap, _range: Range<usize>) {}

/// True when `range` is in the page cache already (a warm load: nothing to ask), judged by one
/// page every `RESIDENT_SAMPLE` bytes and the last one. Checking every page cost ~90 ns a page
/// (the map is fresh, so each is looked up in the page cache): 6 ms of CPU for RN50's 244 MiB
/// during a warm load of 110 ms on two cores. A sampled step that is cold anywhere is caught at the
/// first missing sample; a rare hole between samples is read by the converters' own fault.
#[cfg(target_os = "linux")]
fn resident(map: &Mmap, range: Range<usize>) -> bool {
    let base = map.as_ptr() as usize;
    // Pages of the map: the range lies within the map, which is page-aligned and covers whole pages.
    let first = (base + range.start) / PAGE * PAGE;
    let last = (base + range.end).div_ceil(PAGE) * PAGE - PAGE;
    (first..=last)
        .step_by(RESIDENT_SAMPLE)
        .chain(std::iter::once(last))
        .all(|page| pages_present(page, page + PAGE))
}

/// Whether every page of [start, end) (page-aligned addresses of memory this process has mapped)
/// is in memory, by `mincore`: the page cache for a file map, RAM for an anonymous one.
#[cfg(target_os = "linux")]
fn pages_present(start: usize, end: usize) -> bool {
    let mut pages = vec![0u8; (end - start) / PAGE];
    // SAFETY: callers pass whole pages of a live mapping; mincore writes one byte per page into
    // `pages`, which holds exactly that many.
    let status =
        unsafe { libc::mincore(start as *mut libc::c_void, end - start, pages.as_mut_ptr()) };
    status == 0 && pages.iter().all(|p| p & 1 == 1)
}

#[cfg(not(target_os = "linux"))]
fn resident(_map: &Mmap, _range: Range<usize>) -> bool {
    false
}

/// Faults the whole pages of a fresh destination in with one call rather than one trap per
/// page (a third less kernel time here); a no-op where the kernel lacks it (Linux < 5.14).
/// Destinations already in memory (the parameters of a model that exists, as `load_checkpoint`
/// fills) are left alone: populating present pages still walks them one by one (get_user_pages),
/// 20 ms for ViT-B-32's 600 MB, a quarter of that load.
#[cfg(target_os = "linux")]
fn prefault(dst: &mut [u8]) {
    let base = dst.as_mut_ptr() as usize;
    let start = base.div_ceil(PAGE) * PAGE;
    let end = ((base + dst.len()) / PAGE) * PAGE;
    // A destination is touched as a whole or not at all: its first and last pages tell.
    if end > start && !(pages_present(start, start + PAGE) && pages_present(end - PAGE, end)) {
        // SAFETY: the range lies inside `dst`, memory we may write; MADV_POPULATE_WRITE only
        // makes its pages present and writable, it never changes their contents.
        let _ = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }
}

#[cfg(not(target_os = "linux"))]
fn prefault(_dst: &mut [u8]) {}

/// Drops the whole pages inside `range` from the map: they are read again from the page cache
/// if anyone touches them later.
#[cfg(unix)]
fn release(map: &Mmap, range: &Range<usize>) {
    let base = map.as_ptr() as usize;
    let start = (base + range.start).div_ceil(PAGE) * PAGE - base;
    let end = ((base + range.end) / PAGE) * PAGE - base;
    if end > start {
        // SAFETY: a read-only, file-backed shared map: MADV_DONTNEED only drops our page table
        // entries; later reads fault the same file contents back in. No slice of these pages is
        // being written, and readers of neighbouring chunks see identical bytes either way.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn converts_all_float_pairs() {
        let values = [0.0f32, 1.0, -2.5, 65504.0, 1e-3, f32::INFINITY];
        let floats = [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64];
        for from in floats {
            for to in floats {
                let src = encode(&values, from);
                let mut dst = vec![0u64; values.len() * 2];
                // SAFETY: reinterpreting a u64 buffer as bytes for an aligned destination.
                let dst_bytes = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.as_mut_ptr().cast::<u8>(),
                        values.len() * to.itemsize(),
                    )
                };
                assert!(
                    convert_slice(&src, from, dst_bytes, to),
                    "{from:?} -> {to:?}"
                );
                assert_eq!(
                    dst_bytes,
                    &encode(&decode(&src, from), to)[..],
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn unaligned_source_is_copied() {
        let mut src = vec![0u8; 1];
        src.extend(encode(&[1.5, -3.0], Dtype::F16));
        let mut dst = [0f32; 2];
        // SAFETY: the f32 array viewed as its bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), 8) };
        assert!(convert_slice(&src[1..], Dtype::F16, bytes, Dtype::F32));
        assert_eq!(dst, [1.5, -3.0]);
    }

    #[test]
    fn spans_join_neighbours_in_file_order() {
        let job = |start: usize, len: usize| Job {
            src: start..start + len,
            src_dtype: Dtype::F16,
            dst_address: 0,
            dst_len: 0,
            dst_dtype: Dtype::F32,
        };
        // Two storages a zip header apart, then one far away.
        let jobs = [job(100, 1000), job(1164, 2000), job(1 << 20, 10)];
        let pieces: Vec<Piece> = (0..3)
            .map(|j| Piece {
                job: j,
                elems: 0..jobs[j].src.len() / 2,
            })
            .collect();
        assert_eq!(
            source_spans(&jobs, &pieces),
            vec![100..3164, (1 << 20)..(1 << 20) + 10]
        );
    }

    /// A file larger than several chunks and reader steps, evicted from the page cache first:
    /// the reader ahead of the converters must not change a single value.
    #[cfg(target_os = "linux")]
    #[test]
    fn cold_file_converts_exactly() {
        use std::io::Write;
        let count = (3 * CHUNK_BYTES.max(READ_STEP)) / 2 + 12_345; // f16: 3 chunks of bytes, a tail
        let values: Vec<f32> = (0..count)
            .map(|i| ((i % 4093) as f32) * 0.25 - 500.0)
            .collect();
        let header = 4096 + 7; // storages need not start on a page
        let mut bytes = vec![0u8; header];
        bytes.extend(encode(&values, Dtype::F16));
        let path = std::env::temp_dir().join(format!("clipfast-cold-{}.bin", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let file = File::open(&path).unwrap();
        // SAFETY: posix_fadvise only drops clean cached pages of this file; it changes no data.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        // SAFETY: a read-only map of a file this test owns and does not change meanwhile.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let mut out = vec![0f32; count];
        let jobs = [Job {
            src: header..header + 2 * count,
            src_dtype: Dtype::F16,
            dst_address: out.as_mut_ptr() as usize,
            dst_len: 4 * count,
            dst_dtype: Dtype::F32,
        }];
        let result = run(&path, &file, &map, &jobs);
        std::fs::remove_file(&path).unwrap();
        result.unwrap();
        let expected: Vec<f32> = values.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert!(out == expected);
    }

    /// The sampled residency check: a cached file is resident; evicting it all, its last page or a
    /// run of pages around a sample makes it not.
    #[cfg(target_os = "linux")]
    #[test]
    fn residency_is_sampled_and_sees_evicted_runs() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let len = 3 * RESIDENT_SAMPLE + 5 * PAGE + 123;
        let path =
            std::env::temp_dir().join(format!("clipfast-resident-{}.bin", std::process::id()));
        let mut file = File::create(&path).unwrap();
        // Page by page: the page cache keeps what one write brings as one folio (large folios),
        // and a folio is evicted whole or not at all.
        for piece in vec![1u8; len].chunks(PAGE) {
            file.write_all(piece).unwrap();
        }
        file.sync_all().unwrap();
        drop(file);
        let file = File::open(&path).unwrap();
        // SAFETY: a read-only map of a file this test owns and does not change meanwhile.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        // Read through the file, not the map: a page mapped here could not be evicted.
        let cache = |range: Range<usize>| {
            use std::os::unix::fs::FileExt;
            let mut buffer = vec![0u8; range.len()];
            file.read_exact_at(&mut buffer, range.start as u64).unwrap();
        };
        let evict = |start: usize, count: usize| {
            // SAFETY: posix_fadvise only drops clean cached pages of this file; it changes no data.
            unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    start as libc::off_t,
                    count as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        };
        let base = map.as_ptr() as usize;
        let gone = |start: usize, end: usize| {
            !pages_present(base + start / PAGE * PAGE, base + end.div_ceil(PAGE) * PAGE)
        };
        evict(0, 0);
        if !gone(0, PAGE) {
            return; // a file system that keeps its pages (tmpfs): nothing to observe here
        }
        cache(0..len);
        let warm = resident(&map, 0..len);
        evict(len / PAGE * PAGE, 0); // the last page only (to the end of the file)
        let tail = resident(&map, 0..len);
        cache(0..len);
        evict(2 * RESIDENT_SAMPLE - 64 * PAGE, 128 * PAGE); // 512 KiB around a sample
        let run = resident(&map, 0..len);
        let outside = resident(&map, 0..RESIDENT_SAMPLE);
        evict(0, 0); // the whole file
        let cold = resident(&map, 0..len);
        drop(map);
        std::fs::remove_file(&path).unwrap();
        assert!(
            warm && !tail && !run && outside && !cold,
            "{warm} {tail} {run} {outside} {cold}"
        );
    }

    /// Same-dtype copies read the file with pread: exact bytes, and a file cut short since it was
    /// mapped gives an error instead of a SIGBUS.
    #[cfg(unix)]
    #[test]
    fn same_dtype_copy_reads_the_file_and_reports_truncation() {
        use std::io::Write;
        let values: Vec<f32> = (0..(3 * CHUNK_BYTES / 4 + 3))
            .map(|i| i as f32 * 0.5)
            .collect();
        let bytes = encode(&values, Dtype::F32);
        let path = std::env::temp_dir().join(format!("clipfast-copy-{}.bin", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.write_all(&[7u8; 12]).unwrap();
        file.write_all(&bytes).unwrap();
        drop(file);
        let file = File::open(&path).unwrap();
        // SAFETY: a read-only map of a file this test owns; it is truncated only after the map's
        // last use below (the copy reads through the file, never the map, once truncated).
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let mut out = vec![0f32; values.len()];
        let job = |out: &mut Vec<f32>| Job {
            src: 12..12 + bytes.len(),
            src_dtype: Dtype::F32,
            dst_address: out.as_mut_ptr() as usize,
            dst_len: 4 * out.len(),
            dst_dtype: Dtype::F32,
        };
        let jobs = [job(&mut out)];
        run(&path, &file, &map, &jobs).unwrap();
        assert!(out == values);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let jobs = [job(&mut out)];
        let result = run(&path, &file, &map, &jobs);
        std::fs::remove_file(&path).unwrap();
        assert!(result.unwrap_err().to_string().contains("truncated"));
    }

    fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in values {
            match dtype {
                Dtype::F16 => out.extend(f16::from_f32(v).to_le_bytes()),
                Dtype::BF16 => out.extend(bf16::from_f32(v).to_le_bytes()),
                Dtype::F32 => out.extend(v.to_le_bytes()),
                _ => out.extend(f64::from(v).to_le_bytes()),
            }
        }
        out
    }

    fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
        bytes
            .chunks(dtype.itemsize())
            .map(|c| match dtype {
                Dtype::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
                Dtype::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                _ => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            })
            .collect()
    }
}
