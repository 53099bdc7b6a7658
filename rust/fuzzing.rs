//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run by `make fuzz`) and of the
//! corpus replay test (`cargo test`), one per parser: each takes arbitrary bytes and panics when
//! something that must hold for every input does not. A panic is what the fuzzer reports as a
//! crash, so these checks are what the fuzzers search for:
//!
//! - no panic, no hang, no crash (the sanitizers check memory safety where they run);
//! - a bounded heap: the most bytes a parser holds at once stays within a small multiple of its
//!   input (images: of the pixels `MAX_IMAGE_PIXELS` allows), measured by [`heap::CountingAlloc`]
//!   where the binary installs it (the fuzz targets and this crate's tests do);
//! - results that make sense: every tensor inside its storage, every storage inside the file and
//!   no two sharing bytes, errors that name the file, SIMD equal to the scalar reference, the
//!   two BPE merge strategies equal, a download never accepting more bytes than announced.
//!
//! Compiled for tests and with the `fuzzing` feature only (the fuzz crate enables it).

pub mod heap;

/// Every allocation of the binaries that compile this module (the crate's tests, the fuzz
/// targets) is counted, so that the entry points can check their heap bounds.
#[global_allocator]
static ALLOC: heap::CountingAlloc = heap::CountingAlloc;

use crate::checkpoint::{self, Contents};
use crate::download::engine::{after_chunk, at_end, decide, Decision, Known};
use crate::download::http::Head;
use crate::download::partial::PartialMeta;
use crate::image::batch::{process_item, process_source, Item};
use crate::image::crop::Geometry;
use crate::image::normalize::{Affine, Normalize};
use crate::image::pipeline::resize_crop_native;
use crate::image::pixels::{Mode, Source};
use crate::{pickle, zip};
use std::path::Path;
use std::sync::OnceLock;

/// The file name the checkpoint targets give their bytes; every error must start with it.
const NAME: &str = "fuzz.pt";

/// The most heap a parser may hold at once for `len` bytes of input: `factor` bytes per input
/// byte, plus a fixed allowance for tables and buffers that do not grow with the input.
fn check_heap(target: &str, len: usize, peak: Option<usize>, factor: usize, slack: usize) {
    let Some(peak) = peak else { return };
    let bound = len.saturating_mul(factor).saturating_add(slack);
    assert!(
        peak <= bound,
        "{target}: {peak} bytes of heap for {len} bytes of input (bound {factor} x + {slack})"
    );
}

/// Heap allowed per byte of a checkpoint or pickle, and the fixed allowance (see README, Security
/// model): the unpickler keeps one small node per opcode, the zip reader one entry per directory
/// record.
pub const CHECKPOINT_HEAP_FACTOR: usize = 64;
pub const CHECKPOINT_HEAP_SLACK: usize = 1 << 20;

/// What every successful checkpoint read must satisfy.
fn check_contents(bytes: &[u8], contents: &Contents) {
    // Unmapped npz members (deflated, byte-swapped) have ranges of their own past the end of the file.
    let unmapped: Vec<usize> = contents.unmapped.iter().map(|d| d.storage).collect();
    let in_file = |i: usize| !unmapped.contains(&i);
    let mut spans: Vec<_> = contents
        .storages
        .iter()
        .enumerate()
        .filter(|&(i, _)| in_file(i))
        .map(|(_, s)| s.bytes.clone())
        .collect();
    spans.sort_by_key(|r| (r.start, r.end));
    for pair in spans.windows(2) {
        assert!(
            pair[0].end <= pair[1].start || pair[0].is_empty() || pair[1].is_empty(),
            "storages share bytes: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    for (i, s) in contents.storages.iter().enumerate() {
        assert!(
            !in_file(i) || s.bytes.end <= bytes.len(),
            "storage {} past the file",
            s.key
        );
        assert!(
            in_file(i) || s.bytes.start >= bytes.len(),
            "unmapped storage in the file"
        );
    }
    for d in &contents.unmapped {
        let storage = &contents.storages[d.storage];
        let mut out = vec![0u8; storage.bytes.len()];
        if crate::checkpoint::npz::elements(d, bytes, &mut out).is_ok() {
            assert_eq!(d.data_offset + out.len(), d.size);
        }
    }
    for t in &contents.tensors {
        let storage = contents
            .storages
            .get(t.storage)
            .expect("tensor refers to a storage that exists");
        assert_eq!(t.shape.len(), t.stride.len(), "tensor {}", t.name);
        assert!(t.shape.iter().chain(&t.stride).all(|&v| v >= 0));
        assert!(t.storage_offset >= 0);
        if t.shape.contains(&0) {
            continue;
        }
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .fold(i128::from(t.storage_offset), |acc, (&n, &s)| {
                acc + i128::from(n - 1) * i128::from(s)
            });
        let capacity = (storage.bytes.len() / t.dtype.itemsize()) as i128;
        assert!(last < capacity, "tensor {} outside its storage", t.name);
    }
}

/// The whole checkpoint reader (format detection, zip, pickle, TorchScript, safetensors) on
/// arbitrary bytes.
pub fn checkpoint(data: &[u8]) {
    let (result, peak) = heap::peak_of(|| checkpoint::read(Path::new(NAME), data));
    check_heap(
        "checkpoint",
        data.len(),
        peak,
        CHECKPOINT_HEAP_FACTOR,
        CHECKPOINT_HEAP_SLACK,
    );
    match result {
        Ok(contents) => check_contents(data, &contents),
        Err(e) => assert!(e.to_string().starts_with(NAME), "{e}"),
    }
}

/// The zip reader: the directory, then every entry read (inflated, CRC-checked) with a limit.
pub fn zip(data: &[u8]) {
    const LIMIT: u64 = 1 << 20;
    let (_, peak) = heap::peak_of(|| {
        let Ok(archive) = zip::Archive::new(data) else {
            return;
        };
        let mut spans = Vec::new();
        for entry in archive.entries() {
            assert!(entry.local <= entry.data.start && entry.data.end <= data.len());
            spans.push((entry.local, entry.data.end));
            if let Ok(bytes) = archive.read(entry, LIMIT) {
                assert_eq!(bytes.len() as u64, entry.uncompressed_size);
                assert_eq!(crc32fast::hash(&bytes), entry.crc32);
            }
        }
        spans.sort_unstable();
        assert!(
            spans.windows(2).all(|p| p[0].1 <= p[1].0),
            "entries overlap"
        );
    });
    // One inflated entry at a time, each at most LIMIT bytes.
    check_heap(
        "zip",
        data.len(),
        peak,
        CHECKPOINT_HEAP_FACTOR,
        CHECKPOINT_HEAP_SLACK + 2 * LIMIT as usize,
    );
}

/// A stored zip archive of `entries` (name, bytes), as torch writes them (CRC-32 set).
pub fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    zip_archive(entries, false)
}

/// A zip archive of `entries` (name, bytes), each stored or deflated, CRC-32 set.
pub fn zip_archive(entries: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let packed = if deflate {
            miniz_oxide::deflate::compress_to_vec(data, 6)
        } else {
            data.to_vec()
        };
        let method: &[u8] = if deflate { &[8, 0] } else { &[0, 0] };
        let crc = crc32fast::hash(data).to_le_bytes();
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes();
        let local = u32_of(out.len());
        out.extend_from_slice(b"PK\x03\x04\x14\0\0\0");
        out.extend_from_slice(method);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc);
        out.extend_from_slice(&u32_of(packed.len()));
        out.extend_from_slice(&u32_of(data.len()));
        out.extend_from_slice(&name_len);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&packed);
        central.extend_from_slice(b"PK\x01\x02\x14\0\x14\0\0\0");
        central.extend_from_slice(method);
        central.extend_from_slice(&[0; 4]);
        central.extend_from_slice(&crc);
        central.extend_from_slice(&u32_of(packed.len()));
        central.extend_from_slice(&u32_of(data.len()));
        central.extend_from_slice(&name_len);
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&local);
        central.extend_from_slice(name.as_bytes());
    }
    let count = u16::try_from(entries.len())
        .unwrap_or(u16::MAX)
        .to_le_bytes();
    let cd_offset = u32_of(out.len());
    let cd_size = u32_of(central.len());
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    out.extend_from_slice(&count);
    out.extend_from_slice(&count);
    out.extend_from_slice(&cd_size);
    out.extend_from_slice(&cd_offset);
    out.extend_from_slice(&[0, 0]);
    out
}

/// The `.npz` reader: `data` is one `.npy` member (header and elements); the header parser
/// alone, then archives holding it stored (`np.savez`) and deflated (`np.savez_compressed`),
/// whose members are inflated and CRC-checked.
pub fn npz(data: &[u8]) {
    let (_, peak) = heap::peak_of(|| crate::checkpoint::npz::parse_header(data));
    check_heap(
        "npz",
        data.len(),
        peak,
        CHECKPOINT_HEAP_FACTOR,
        CHECKPOINT_HEAP_SLACK,
    );
    for deflate in [false, true] {
        checkpoint(&zip_archive(&[("w.npy", data), ("b/c.npy", data)], deflate));
    }
}

/// Tensor data records the pickle targets' archives carry (`data/0` .. `data/3`, 64 bytes each).
const RECORDS: [&str; 4] = ["a/data/0", "a/data/1", "a/data/2", "a/data/3"];
const RECORD: [u8; 64] = [0x3c; 64];

/// The restricted unpickler, alone (heap bound) and as the `data.pkl` of a torch.save archive
/// (the tensor rebuild and allow-list logic of `torch_pickle`).
pub fn unpickle(data: &[u8]) {
    let (_, peak) = heap::peak_of(|| pickle::parse(data));
    check_heap(
        "pickle",
        data.len(),
        peak,
        CHECKPOINT_HEAP_FACTOR,
        CHECKPOINT_HEAP_SLACK,
    );
    let mut entries: Vec<(&str, &[u8])> = vec![("a/data.pkl", data), ("a/byteorder", b"little")];
    entries.extend(RECORDS.iter().map(|name| (*name, &RECORD[..])));
    checkpoint(&stored_zip(&entries));
}

/// Splits TorchScript input into the pickle and the code of its classes.
pub const CODE_SEPARATOR: &[u8] = b"\n#code\n";

/// The TorchScript reader: `data` is `data.pkl`, then [`CODE_SEPARATOR`] and the text of
/// `code/__torch__/m.py` (class declarations with `__parameters__` / `__buffers__`).
pub fn torchscript(data: &[u8]) {
    let (pkl, code) = match data
        .windows(CODE_SEPARATOR.len())
        .position(|w| w == CODE_SEPARATOR)
    {
        Some(at) => (&data[..at], &data[at + CODE_SEPARATOR.len()..]),
        None => (
            data,
            &b"class M(Module):\n  __parameters__ = [\"w\", ]\n  __buffers__ = []\n"[..],
        ),
    };
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("a/data.pkl", pkl),
        ("a/code/__torch__/m.py", code),
        ("a/constants.pkl", b"\x80\x02).".as_slice()),
        ("a/version", b"3\n"),
    ];
    entries.extend(RECORDS.iter().map(|name| (*name, &RECORD[..])));
    checkpoint(&stored_zip(&entries));
}

/// The safetensors reader: `data` is the JSON header, followed in the file by 256 data bytes.
pub fn safetensors(data: &[u8]) {
    let mut file = (data.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(data);
    file.extend_from_slice(&[0x3c; 256]);
    checkpoint(&file);
}

/// Pillow's `MAX_IMAGE_PIXELS` in the image targets (smaller than Pillow's 89 M, to keep each
/// run fast; the bound is what is checked, not its value).
const MAX_PIXELS: u64 = 1 << 22;

fn identity_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| (0..768).map(|i| (i % 256) as u8).collect())
}

/// An encoded image through the batch path (decode, resize, crop) into a 3 x n x n u8 output.
fn encoded_item(target: &str, data: &[u8], item: &Item<'_>, n: usize) {
    let norm = Normalize::table(identity_table());
    let mut out = vec![0u8; 3 * n * n];
    let (_, peak) = heap::peak_of(|| process_item(item, n, &norm, &mut out, true));
    // The decoded image (at most 4 bytes a pixel), its widened copy and the resize's
    // intermediate rows.
    check_heap(
        target,
        data.len(),
        peak,
        16,
        12 * MAX_PIXELS as usize + (1 << 20),
    );
}

/// The Rust PNG path (8-bit L, LA, RGB, RGBA): decode, then resize and crop to 16 and 37 pixels.
pub fn png(data: &[u8]) {
    for n in [16, 37] {
        let item = Item::Png {
            data,
            max_pixels: Some(MAX_PIXELS),
        };
        encoded_item("png", data, &item, n);
    }
}

/// Where the JPEG targets find a libjpeg (6.2 ABI): `CLIPFAST_LIBJPEG`, else the one bundled
/// with the Pillow of the project's virtual environment, else the system's.
pub fn libjpeg_candidates() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(path) = std::env::var("CLIPFAST_LIBJPEG") {
        out.push(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    if let Ok(dirs) = std::fs::read_dir(venv) {
        for dir in dirs.flatten() {
            let libs = dir.path().join("site-packages/pillow.libs");
            if let Ok(files) = std::fs::read_dir(libs) {
                for file in files.flatten() {
                    let name = file.file_name().to_string_lossy().into_owned();
                    if name.starts_with("libjpeg") && name.contains(".so") {
                        out.push(file.path().to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    out.push("libjpeg.so.62".into());
    out
}

/// Loads a libjpeg for the JPEG target once; panics when there is none (a replay that silently
/// skipped JPEGs would test nothing).
fn ensure_libjpeg() {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let candidates = libjpeg_candidates();
        for path in &candidates {
            if crate::image::jpeg::use_library(path).is_ok() {
                return Ok(());
            }
        }
        Err(format!("no usable libjpeg among {candidates:?}"))
    });
    if let Err(e) = loaded {
        panic!("{e}");
    }
}

/// The Rust JPEG path through libjpeg (crop, skip, streamed resize, finish), exact and with
/// Pillow's draft scaling.
pub fn jpeg(data: &[u8]) {
    ensure_libjpeg();
    for (n, scale_for) in [(16, None), (37, None), (16, Some(32))] {
        let item = Item::Jpeg {
            data,
            max_pixels: Some(MAX_PIXELS),
            scale_for,
        };
        encoded_item("jpeg", data, &item, n);
    }
}

const MODES: [Mode; 8] = [
    Mode::L,
    Mode::LA,
    Mode::Rgb,
    Mode::Rgba,
    Mode::Cmyk,
    Mode::I,
    Mode::F,
    Mode::I16,
];

/// Resize, crop and normalise on arbitrary sizes and modes: `data` = mode, width, height, n,
/// then pixel bytes (repeated to fill the image). The SIMD passes must give the scalar
/// reference's bytes, and the float32 arithmetic route the table's values.
pub fn resize(data: &[u8]) {
    let Some((head, pixels)) = data.split_at_checked(6) else {
        return;
    };
    let mode = MODES[usize::from(head[0]) % MODES.len()];
    let width = usize::from(u16::from_le_bytes([head[1], head[2]]) % 320) + 1;
    let height = usize::from(u16::from_le_bytes([head[3], head[4]]) % 320) + 1;
    let n = usize::from(head[5]) % 64 + 1;
    let size = width * height * mode.packed_size();
    let packed: Vec<u8> = if pixels.is_empty() {
        vec![0; size]
    } else {
        pixels.iter().copied().cycle().take(size).collect()
    };
    let Ok(src) = Source::packed(&packed, width, height, mode) else {
        panic!("packed source of the exact size refused");
    };
    let Ok(g) = Geometry::new(width, height, n) else {
        return;
    };
    let (simd, peak) = heap::peak_of(|| resize_crop_native(&src, &g, true));
    check_heap("resize", size, peak, 16, 1 << 20);
    let scalar = resize_crop_native(&src, &g, false);
    assert!(simd == scalar, "SIMD and scalar resize differ");
    if !mode.is_u8() || mode == Mode::Cmyk {
        return;
    }
    // float32 output: the table route (scalar) and the arithmetic route (SIMD) agree.
    let (mean, std) = (
        [0.481_454_66, 0.457_827_5, 0.408_210_73],
        [0.268_629_54, 0.261_302_6, 0.275_777_1],
    );
    let lut: Vec<f32> = (0..768)
        .map(|i| ((i % 256) as f32 / 255.0 - mean[i / 256]) / std[i / 256])
        .collect();
    let affine = Affine::matching(mean, std, &lut);
    let with_route = Normalize { lut: &lut, affine };
    let by_table = Normalize::table(&lut);
    let (mut a, mut b) = (vec![0f32; 3 * n * n], vec![0f32; 3 * n * n]);
    let ra = process_source(&src, n, &with_route, &mut a, true);
    let rb = process_source(&src, n, &by_table, &mut b, false);
    assert_eq!(ra.is_ok(), rb.is_ok());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "normalize routes differ"
    );
}

/// clip's vocabulary, from the merges file shipped in the package (gzip).
fn bpe() -> &'static crate::tokenizer::bpe::Bpe {
    static BPE: OnceLock<crate::tokenizer::bpe::Bpe> = OnceLock::new();
    BPE.get_or_init(|| {
        let gz = include_bytes!("../python/clipfast/bpe_simple_vocab_16e6.txt.gz");
        let text = gunzip(gz).expect("the shipped vocabulary inflates");
        let text = String::from_utf8(text).expect("the shipped vocabulary is UTF-8");
        let vocab = crate::tokenizer::vocab::Vocab::from_merges(&text).expect("vocabulary");
        crate::tokenizer::bpe::Bpe::new(vocab)
    })
}

/// The one member of a gzip file (RFC 1952 header, then raw deflate).
fn gunzip(gz: &[u8]) -> Option<Vec<u8>> {
    let flags = *gz.get(3)?;
    let mut at = 10;
    if flags & 4 != 0 {
        let len = usize::from(u16::from_le_bytes([*gz.get(at)?, *gz.get(at + 1)?]));
        at += 2 + len;
    }
    for bit in [8, 16] {
        if flags & bit != 0 {
            at += gz.get(at..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    miniz_oxide::inflate::decompress_to_vec(gz.get(at..)?).ok()
}

/// The tokenizer on arbitrary Unicode: the fast-path test and cleaning, pre-tokenization, and
/// BPE. Each word's ids must spell the word's bytes back (byte-level BPE loses nothing), and
/// the two merge strategies (scan for short words, heap for long ones) must agree.
pub fn tokenizer(data: &[u8]) {
    use crate::tokenizer::{cleanup, pretokenize, vocab};
    let text = String::from_utf8_lossy(data);
    let bpe = bpe();
    static DECODE: OnceLock<std::collections::HashMap<char, u8>> = OnceLock::new();
    let decode = DECODE.get_or_init(|| {
        vocab::byte_alphabet()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect()
    });
    for extended in [false, true] {
        let _ = cleanup::is_fast(&text, extended);
    }
    let cleaned = if cleanup::is_fast(&text, false) {
        cleanup::clean_fast(&text)
    } else {
        text.to_lowercase()
    };
    let mut covered = 0;
    pretokenize::for_each_word(&cleaned, |word| {
        assert!(!word.is_empty(), "empty pre-token");
        covered += word.len();
        let ids = bpe.encode_word_uncached(word);
        if word == vocab::START_OF_TEXT || word == vocab::END_OF_TEXT {
            return true;
        }
        let (scanned, heaped) = bpe.encode_word_both_ways(word);
        assert_eq!(scanned, heaped, "merge strategies differ on {word:?}");
        assert_eq!(ids, scanned);
        let mut bytes = Vec::new();
        for &id in &ids {
            let symbol = &bpe.vocab.decoder[id as usize];
            let symbol = symbol.strip_suffix("</w>").unwrap_or(symbol);
            bytes.extend(symbol.chars().map(|c| decode[&c]));
        }
        assert_eq!(bytes, word.as_bytes(), "ids do not spell the word");
        true
    });
    assert!(covered <= cleaned.len());
}

/// A scripted exchange for the download target: the validator kept from an earlier try, then
/// responses (status, headers, body chunk sizes, how the body ends).
struct Script<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }

    /// A line of text up to '\n' (lossy UTF-8).
    fn line(&mut self) -> Option<String> {
        let rest = self.data.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        self.pos += (end + 1).min(rest.len());
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

/// clipfast's own handling of HTTP responses (not ureq's parser): `Head::parse` of arbitrary
/// header values, then [`decide`] and the body accounting over a scripted series of responses,
/// as the engine applies them. A download must never keep more bytes than announced, resume only
/// where it stopped and only while the validator agrees, and finish only with every byte.
pub fn http(data: &[u8]) {
    let mut script = Script { data, pos: 0 };
    // What an earlier try left: the partial file's record (itself parsed from the script) and
    // its length.
    let meta_text = script.line().unwrap_or_default().replace('|', "\n");
    let mut meta = PartialMeta::decode(&meta_text);
    let mut have = u64::from(script.u16().unwrap_or(0));
    'responses: for _ in 0..16 {
        let Some(status) = script.u16() else { break };
        let status = 100 + status % 500;
        let mut headers: Vec<(String, String)> = Vec::new();
        while let Some(line) = script.line() {
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((name.trim().to_ascii_lowercase(), value.to_string()));
        }
        let head = Head::parse(status, |name| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        });
        let asked_range = meta.is_some() && have > 0;
        if !asked_range {
            have = 0; // bytes without a validator are dropped before the request
        }
        let known = Known {
            have,
            asked_range,
            meta: meta.as_ref(),
        };
        let total = match decide(&head, &known) {
            Decision::Fresh {
                total: announced,
                validator,
            } => {
                assert_eq!(status, 200);
                have = 0;
                meta = validator.map(|validator| PartialMeta {
                    url: "http://127.0.0.1/f".into(),
                    total: announced,
                    validator,
                });
                announced
            }
            Decision::Resume { total } => {
                assert!(status == 206 && asked_range);
                let m = meta.as_ref().expect("a resume has a record");
                let (start, range_total) =
                    crate::download::engine::parse_content_range(head.content_range.as_deref())
                        .expect("a resume has a Content-Range");
                assert_eq!(start, have, "resumed elsewhere than where the file stopped");
                assert!(m
                    .validator
                    .agrees_with(head.etag.as_deref(), head.last_modified.as_deref()));
                if let (Some(a), Some(b)) = (m.total, range_total) {
                    assert_eq!(a, b, "resumed a file of another size");
                }
                total
            }
            Decision::Complete => {
                // The recorded length, or the one a 416 states (`bytes */<length>`), is `have`.
                let stated =
                    crate::download::engine::parse_unsatisfied_range(head.content_range.as_deref());
                assert!(status == 416 && asked_range);
                assert_eq!(meta.as_ref().and_then(|m| m.total).or(stated), Some(have));
                return;
            }
            Decision::Retry { .. } => continue,
            Decision::Restart(_) => {
                have = 0;
                meta = None;
                continue;
            }
            Decision::Fatal(_) => return,
        };
        if let Some(total) = total {
            assert!(have <= total);
        }
        // The body: chunk sizes until a zero, then it ends (a clean end of the stream).
        loop {
            let Some(len) = script.u16() else { return };
            if len == 0 {
                break;
            }
            match after_chunk(have, u64::from(len), total) {
                Ok(now) => {
                    assert!(total.is_none_or(|t| now <= t));
                    have = now;
                }
                Err(_) => {
                    assert!(total.is_some_and(|t| have + u64::from(len) > t));
                    // The engine restarts: the kept bytes and their record go.
                    have = 0;
                    meta = None;
                    continue 'responses;
                }
            }
        }
        if at_end(have, total).is_ok() {
            assert!(
                total.is_none_or(|t| have == t),
                "finished with bytes missing"
            );
            return;
        }
    }
}

/// The targets by name, for the replay test and for `fuzz/` (one binary each).
/// A target's entry point.
pub type Target = fn(&[u8]);

pub const TARGETS: [(&str, Target); 11] = [
    ("checkpoint", checkpoint),
    ("zip", zip),
    ("pickle", unpickle),
    ("torchscript", torchscript),
    ("safetensors", safetensors),
    ("npz", npz),
    ("png", png),
    ("jpeg", jpeg),
    ("resize", resize),
    ("tokenizer", tokenizer),
    ("http", http),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus_dirs(target: &str) -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        ["seeds", "corpus", "regressions"]
            .iter()
            .map(|kind| root.join(kind).join(target))
            .collect()
    }

    /// Every committed input (seeds, the fuzzers' minimised corpora, the regression inputs of
    /// crashes they found) through its target's entry point, on each `cargo test`.
    #[test]
    fn replay_committed_corpora() {
        let mut total = 0;
        for (target, run) in TARGETS {
            let mut count = 0;
            for dir in corpus_dirs(target) {
                let Ok(files) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut files: Vec<PathBuf> = files.flatten().map(|f| f.path()).collect();
                files.sort();
                for file in files {
                    let data = std::fs::read(&file).expect("corpus file");
                    let outcome = std::panic::catch_unwind(|| run(&data));
                    assert!(outcome.is_ok(), "{target}: {} fails", file.display());
                    count += 1;
                }
            }
            assert!(count > 0, "no corpus for target {target}");
            total += count;
        }
        eprintln!("replayed {total} corpus files");
    }

    /// BINUNICODE `text`.
    fn text(text: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// LONG_BINPUT / LONG_BINGET `key`.
    fn put(key: u32) -> Vec<u8> {
        [&[b'r'][..], &key.to_le_bytes()].concat()
    }

    fn get(key: u32) -> Vec<u8> {
        [&[b'j'][..], &key.to_le_bytes()].concat()
    }

    /// Runs `f` on another thread; fails when it takes longer than `seconds` (a hang), without
    /// waiting for it.
    fn within<F: FnOnce() + Send + 'static>(seconds: u64, f: F) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        let outcome = rx.recv_timeout(std::time::Duration::from_secs(seconds));
        assert!(
            !matches!(outcome, Err(std::sync::mpsc::RecvTimeoutError::Timeout)),
            "still running after {seconds} s"
        );
        assert!(outcome.is_ok(), "the check panicked");
    }

    /// STACK_GLOBAL on two memoised 1 MB strings, 300 times: the globals share the strings
    /// (copying them made 600 MB from a 1 MB pickle).
    #[test]
    fn memoised_names_of_globals_are_not_copied() {
        let long = "m".repeat(1 << 20);
        let mut p = b"\x80\x04".to_vec();
        p.extend(text(&long));
        p.extend(put(0));
        for _ in 0..300 {
            p.extend(get(0));
            p.extend(get(0));
            p.push(0x93);
            p.push(b'0');
        }
        p.extend_from_slice(b"N.");
        within(60, move || unpickle(&p));
    }

    /// A dict whose 2,000 keys are one memoised 1 MB string: keys compare by reference to the
    /// pickle's text (they were copied for each entry).
    #[test]
    fn memoised_dict_keys_are_not_copied() {
        let mut p = b"\x80\x02}(".to_vec();
        p.extend(text(&"k".repeat(1 << 20)));
        p.extend(put(0));
        p.push(b'N');
        for _ in 0..2000 {
            p.extend(get(0));
            p.push(b'N');
        }
        p.extend_from_slice(b"u.");
        within(60, move || unpickle(&p));
    }

    /// One tensor whose shape is a memoised tuple of 10,000 dims, reached under 3,000 names:
    /// 480 MB of shapes from a 60 KB pickle, now refused once past the pickle's allowance.
    #[test]
    fn memoised_shapes_do_not_multiply() {
        let mut p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        p.extend_from_slice(b"(");
        p.extend(text("storage"));
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend(text("0"));
        p.extend(text("cpu"));
        p.extend_from_slice(b"K\x01tQK\x00(");
        p.extend(std::iter::repeat_n(*b"K\x01", 10_000).flatten());
        p.push(b't');
        p.extend(put(1));
        p.extend(get(1));
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        p.extend(put(0));
        p.push(b'0');
        p.extend_from_slice(b"}(");
        for i in 0..3000 {
            p.extend(text(&format!("t{i}")));
            p.extend(get(0));
        }
        p.extend_from_slice(b"u.");
        let entries: Vec<(&str, &[u8])> = vec![("a/data.pkl", &p), ("a/data/0", &[0u8; 4][..])];
        let archive = stored_zip(&entries);
        let e = checkpoint::read(Path::new(NAME), &archive).unwrap_err();
        assert!(e.to_string().contains("far more names, shapes"), "{e}");
        within(60, move || unpickle(&p));
    }

    /// A TorchScript module tree of 60 levels where each module holds the next one twice (one
    /// object through the memo): 2^60 paths, which the walk followed one by one.
    #[test]
    fn shared_submodules_are_not_walked_exponentially() {
        let mut p = b"\x80\x02c__torch__.m\nM\n)\x81}b".to_vec();
        p.extend(put(0));
        for level in 1..=60u32 {
            p.extend_from_slice(b"c__torch__.m\nM\n)\x81}(");
            for slot in ["a", "b"] {
                p.extend(text(slot));
                p.extend(get(level - 1));
            }
            p.extend_from_slice(b"ub");
            p.extend(put(level));
        }
        p.push(b'.');
        p.extend_from_slice(CODE_SEPARATOR);
        p.extend_from_slice(b"class M(Module):\n  __parameters__ = []\n");
        within(60, move || torchscript(&p));
    }

    /// A 10 GB tensor declared in files of under 1 KB: an error, with next to no heap used.
    #[test]
    fn a_10gb_tensor_declared_in_a_1kb_file_is_refused_before_allocating() {
        let header =
            br#"{"w":{"dtype":"F32","shape":[2500000000],"data_offsets":[0,10000000000]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend_from_slice(&[0; 16]);
        let mut p = b"\x80\x02}(".to_vec();
        p.extend(text("w"));
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        p.extend(text("storage"));
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend(text("0"));
        p.extend(text("cpu"));
        p.extend_from_slice(
            b"\x8a\x05\x00\xf9\x02\x95\x00tQK\x00\x8a\x05\x00\xf9\x02\x95\x00\x85K\x01\x85\x89",
        );
        p.extend_from_slice(b"ccollections\nOrderedDict\n)RtRu.");
        let entries: Vec<(&str, &[u8])> = vec![("a/data.pkl", &p), ("a/data/0", &[0u8; 16][..])];
        let zip = stored_zip(&entries);
        for file in [st, zip] {
            assert!(file.len() < 1024, "{}", file.len());
            let (result, peak) = heap::peak_of(|| checkpoint::read(Path::new(NAME), &file));
            let e = result.expect_err("refused").to_string();
            assert!(
                e.contains("past the end") || e.contains("needs 10000000000"),
                "{e}"
            );
            assert!(peak.is_some_and(|p| p < 64 << 10), "{peak:?}");
        }
    }

    #[test]
    fn the_heap_is_counted_in_tests() {
        let (v, peak) = heap::peak_of(|| vec![0u8; 1 << 16]);
        assert_eq!(v.len(), 1 << 16);
        assert!(peak.is_some_and(|p| p >= 1 << 16), "{peak:?}");
    }
}
