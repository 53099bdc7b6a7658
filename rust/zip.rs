//! A read-only ZIP reader over a byte slice (the memory map of a checkpoint).
//!
//! Only what checkpoints need: the central directory (with ZIP64), each entry's data range,
//! stored entries as zero-copy slices and deflated entries inflated with a size limit. Every
//! offset and length read from the file is checked against the slice before it is used, and no
//! two entries may share bytes (overlapping entries would let a small file declare many large
//! records). What `read` returns (the records the reader parses: pickles, code, byte order) is
//! checked against the CRC-32 of the central directory; the tensor data records are never read
//! through it, they stay zero-copy views of the map, unchecked (hashing them would read every
//! byte of a multi-GB file on each load; the download's SHA-256 covers them).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

/// What is wrong with an archive; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipError(pub String);

impl std::fmt::Display for ZipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ZipError {}

type Result<T> = std::result::Result<T, ZipError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ZipError(msg.into()))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
/// The end record may be followed by a comment of at most 65535 bytes.
const MAX_COMMENT: usize = 0xFFFF;

/// Compression methods checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored,
    Deflated,
}

/// One file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub method: Method,
    /// Where the (possibly compressed) bytes lie in the archive.
    pub data: Range<usize>,
    pub uncompressed_size: u64,
    /// CRC-32 of the uncompressed bytes, from the central directory.
    pub crc32: u32,
    /// Where the entry's local header starts (the entry occupies `local..data.end`).
    pub local: usize,
}

/// The directory of an archive: entries in central-directory order, and an index by name.
#[derive(Debug)]
pub struct Archive<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

/// Little-endian reads that fail instead of panicking past the end.
fn read_u16(bytes: &[u8], at: usize) -> Result<u16> {
    match bytes.get(at..at.saturating_add(2)) {
        Some(b) => Ok(u16::from_le_bytes([b[0], b[1]])),
        None => err("unexpected end of file (truncated zip)"),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    match bytes.get(at..at.saturating_add(4)) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => err("unexpected end of file (truncated zip)"),
    }
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64> {
    match bytes.get(at..at.saturating_add(8)) {
        Some(b) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        }
        None => err("unexpected end of file (truncated zip)"),
    }
}

fn to_usize(value: u64, what: &str) -> Result<usize> {
    usize::try_from(value).or_else(|_| err(format!("{what} {value} does not fit in memory")))
}

/// A range `start..start+len` that lies inside `total`, or an error naming `what`.
fn checked_range(start: u64, len: u64, total: usize, what: &str) -> Result<Range<usize>> {
    let end = start.checked_add(len);
    match end {
        Some(end) if end <= total as u64 => Ok(to_usize(start, what)?..to_usize(end, what)?),
        _ => err(format!(
            "{what} (bytes {start}..{}) lies past the end of the file ({total} bytes): truncated zip",
            start.saturating_add(len)
        )),
    }
}

/// True when the bytes start like a ZIP archive (a local file header or an empty archive).
pub fn looks_like_zip(bytes: &[u8]) -> bool {
    matches!(read_u32(bytes, 0), Ok(LOCAL_SIG) | Ok(EOCD_SIG))
}

impl<'a> Archive<'a> {
    /// Parses the central directory of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let eocd = find_eocd(bytes)?;
        let mut count = u64::from(read_u16(bytes, eocd + 10)?);
        let mut cd_size = u64::from(read_u32(bytes, eocd + 12)?);
        let mut cd_offset = u64::from(read_u32(bytes, eocd + 16)?);
        // ZIP64: the locator sits right before the end record and points at the ZIP64 end record.
        if eocd >= 20 && read_u32(bytes, eocd - 20)? == ZIP64_LOCATOR_SIG {
            let z64 = to_usize(read_u64(bytes, eocd - 20 + 8)?, "ZIP64 end record offset")?;
            if read_u32(bytes, z64)? != ZIP64_EOCD_SIG {
                return err("ZIP64 end of central directory record is missing (truncated zip?)");
            }
            count = read_u64(bytes, z64 + 32)?;
            cd_size = read_u64(bytes, z64 + 40)?;
            cd_offset = read_u64(bytes, z64 + 48)?;
        }
        let cd = checked_range(cd_offset, cd_size, bytes.len(), "central directory")?;
        // Each entry takes at least CENTRAL_LEN bytes: do not trust `count` for the allocation.
        let max_entries = cd.len() / CENTRAL_LEN;
        if count > max_entries as u64 {
            return err(format!(
                "central directory claims {count} entries but has room for {max_entries} (damaged zip)"
            ));
        }
        let mut records = Vec::with_capacity(count as usize);
        let mut at = cd.start;
        for _ in 0..count {
            let (record, next) = read_central_entry(bytes, at, cd.end)?;
            at = next;
            records.push(record);
        }
        prefetch_local_headers(bytes, &records);
        let mut entries = Vec::with_capacity(records.len());
        let mut by_name = HashMap::with_capacity(records.len());
        for record in records {
            let entry = resolve_local_header(bytes, record)?;
            by_name.insert(entry.name.clone(), entries.len());
            entries.push(entry);
        }
        refuse_overlaps(&entries, &cd)?;
        Ok(Archive {
            bytes,
            entries,
            by_name,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The bytes of an entry as they lie in the archive (compressed when deflated).
    pub fn raw(&self, entry: &Entry) -> &'a [u8] {
        // Entries come from `Archive::new`, which checked every data range against the bytes.
        self.bytes.get(entry.data.clone()).unwrap_or(&[])
    }

    /// The uncompressed contents of an entry: a slice of the map when stored, inflated otherwise,
    /// checked against the entry's CRC-32. `limit` bounds the size of what may be allocated.
    pub fn read(&self, entry: &Entry, limit: u64) -> Result<Cow<'a, [u8]>> {
        let out = self.read_unchecked(entry, limit)?;
        let crc = crc32fast::hash(&out);
        if crc != entry.crc32 {
            return err(format!(
                "entry {} is damaged: its CRC-32 is {crc:08x}, the directory says {:08x}",
                entry.name, entry.crc32
            ));
        }
        Ok(out)
    }

    fn read_unchecked(&self, entry: &Entry, limit: u64) -> Result<Cow<'a, [u8]>> {
        let raw = &self.bytes[entry.data.clone()];
        match entry.method {
            Method::Stored => Ok(Cow::Borrowed(raw)),
            Method::Deflated => {
                if entry.uncompressed_size > limit {
                    return err(format!(
                        "entry {} inflates to {} bytes, more than the limit of {limit}",
                        entry.name, entry.uncompressed_size
                    ));
                }
                let size = to_usize(entry.uncompressed_size, "entry size")?;
                match miniz_oxide::inflate::decompress_to_vec_with_limit(raw, size) {
                    Ok(out) if out.len() == size => Ok(Cow::Owned(out)),
                    Ok(out) => err(format!(
                        "entry {} inflates to {} bytes, the directory says {size}",
                        entry.name,
                        out.len()
                    )),
                    Err(e) => err(format!(
                        "entry {} cannot be inflated: {:?}",
                        entry.name, e.status
                    )),
                }
            }
        }
    }
}

/// No two entries, and no entry and the central directory, may share bytes: every record is its
/// own run of the file, so records never add up to more than the file's size.
fn refuse_overlaps(entries: &[Entry], cd: &Range<usize>) -> Result<()> {
    let mut spans: Vec<(usize, usize, &str)> = entries
        .iter()
        .map(|e| (e.local, e.data.end, e.name.as_str()))
        .collect();
    if !cd.is_empty() {
        spans.push((cd.start, cd.end, "the central directory"));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return err(format!(
                "entries {a} and {b} overlap (a damaged or crafted zip)"
            ));
        }
    }
    Ok(())
}

/// Finds the end-of-central-directory record, searching backwards over a possible comment.
fn find_eocd(bytes: &[u8]) -> Result<usize> {
    if bytes.len() < EOCD_LEN {
        return err(format!(
            "{} bytes is too short to be a zip archive",
            bytes.len()
        ));
    }
    let last = bytes.len() - EOCD_LEN;
    let first = last.saturating_sub(MAX_COMMENT);
    for at in (first..=last).rev() {
        if bytes[at..at + 4] == EOCD_SIG.to_le_bytes() {
            let comment = usize::from(read_u16(bytes, at + 20)?);
            if at + EOCD_LEN + comment == bytes.len() {
                return Ok(at);
            }
        }
    }
    err("end of central directory record not found (truncated or not a zip archive)")
}

/// What the central directory says of an entry; where its data starts needs its local header.
struct CentralRecord {
    name: String,
    method: Method,
    compressed: u64,
    uncompressed: u64,
    crc32: u32,
    local: usize,
}

/// Reads one central-directory entry at `at` (which must end before `end`); returns it and the
/// offset of the next one.
fn read_central_entry(bytes: &[u8], at: usize, end: usize) -> Result<(CentralRecord, usize)> {
    if at + CENTRAL_LEN > end || read_u32(bytes, at)? != CENTRAL_SIG {
        return err(format!("central directory entry at byte {at} is damaged"));
    }
    let method = read_u16(bytes, at + 10)?;
    let crc32 = read_u32(bytes, at + 16)?;
    let mut compressed = u64::from(read_u32(bytes, at + 20)?);
    let mut uncompressed = u64::from(read_u32(bytes, at + 24)?);
    let name_len = usize::from(read_u16(bytes, at + 28)?);
    let extra_len = usize::from(read_u16(bytes, at + 30)?);
    let comment_len = usize::from(read_u16(bytes, at + 32)?);
    let mut local = u64::from(read_u32(bytes, at + 42)?);
    let name_start = at + CENTRAL_LEN;
    let next = name_start + name_len + extra_len + comment_len;
    if next > end {
        return err(format!(
            "central directory entry at byte {at} runs past the directory"
        ));
    }
    let name = String::from_utf8_lossy(&bytes[name_start..name_start + name_len]).into_owned();
    // ZIP64 extra field: the 64-bit values appear, in this order, only for fields set to 0xFFFFFFFF.
    let mut extra = &bytes[name_start + name_len..name_start + name_len + extra_len];
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let Some(body) = extra.get(4..4 + len) else {
            return err(format!("entry {name}: extra field runs past its end"));
        };
        if id == 0x0001 {
            let mut pos = 0;
            for field in [&mut uncompressed, &mut compressed, &mut local] {
                if *field == 0xFFFF_FFFF {
                    *field = read_u64(body, pos)
                        .or_else(|_| err(format!("entry {name}: ZIP64 extra field too short")))?;
                    pos += 8;
                }
            }
        }
        extra = &extra[4 + len..];
    }
    let method = match method {
        0 => Method::Stored,
        8 => Method::Deflated,
        other => {
            return err(format!(
                "entry {name}: unsupported compression method {other}"
            ))
        }
    };
    if method == Method::Stored && compressed != uncompressed {
        return err(format!("entry {name}: stored entry with differing sizes"));
    }
    let local = to_usize(local, "local header offset")?;
    let record = CentralRecord {
        name,
        method,
        compressed,
        uncompressed,
        crc32,
        local,
    };
    Ok((record, next))
}

/// Asks the kernel to read, all at once, the page of every entry's local header: `bytes` is a map
/// of the file, and on a cold page cache reading each header as the parse reaches it is one
/// synchronous disk read per entry (hundreds in a checkpoint: 0.2 s of a 0.4 s ViT-B/32 load).
#[cfg(unix)]
fn prefetch_local_headers(bytes: &[u8], records: &[CentralRecord]) {
    const PAGE: usize = 4096;
    let base = bytes.as_ptr() as usize;
    let mut last_page = usize::MAX;
    for record in records {
        if record.local >= bytes.len() {
            continue; // refused when the header is read
        }
        let page = (base + record.local) / PAGE * PAGE;
        if page == last_page {
            continue;
        }
        last_page = page;
        // The header may cross into the next page, where `bytes` continues into it.
        let len = (base + bytes.len()).min(page + 2 * PAGE) - page;
        // SAFETY: [page, page + len) holds only pages that contain bytes of `bytes` (the page of
        // one of its bytes, and the next one only where `bytes` continues into it), all mapped.
        // MADV_WILLNEED is advice: it changes no contents and cannot fail in a way that matters.
        unsafe {
            libc::madvise(page as *mut libc::c_void, len, libc::MADV_WILLNEED);
        }
    }
}

#[cfg(not(unix))]
fn prefetch_local_headers(_bytes: &[u8], _records: &[CentralRecord]) {}

/// The entry of `record`, once its local header confirms where the data starts.
fn resolve_local_header(bytes: &[u8], record: CentralRecord) -> Result<Entry> {
    let (name, local) = (record.name, record.local);
    if read_u32(bytes, local).ok() != Some(LOCAL_SIG) {
        return err(format!(
            "entry {name}: local header at byte {local} is missing (truncated or damaged zip)"
        ));
    }
    let local_name = usize::from(read_u16(bytes, local + 26)?);
    let local_extra = usize::from(read_u16(bytes, local + 28)?);
    let data_start = (local + LOCAL_LEN + local_name + local_extra) as u64;
    let data = checked_range(
        data_start,
        record.compressed,
        bytes.len(),
        &format!("entry {name}"),
    )?;
    Ok(Entry {
        name,
        method: record.method,
        data,
        uncompressed_size: record.uncompressed,
        crc32: record.crc32,
        local,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a minimal archive with stored entries (and optionally ZIP64 fields).
    pub(crate) fn build(entries: &[(&str, &[u8])], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let local = out.len() as u32;
            let crc = crc32fast::hash(data);
            out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend_from_slice(&crc.to_le_bytes());
            let size = if zip64 {
                0xFFFF_FFFFu32
            } else {
                data.len() as u32
            };
            central.extend_from_slice(&size.to_le_bytes());
            central.extend_from_slice(&size.to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&(if zip64 { 20u16 } else { 0 }).to_le_bytes());
            // comment length, disk number, internal and external attributes
            central.extend_from_slice(&[0; 10]);
            central.extend_from_slice(&local.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
            if zip64 {
                central.extend_from_slice(&1u16.to_le_bytes());
                central.extend_from_slice(&16u16.to_le_bytes());
                central.extend_from_slice(&(data.len() as u64).to_le_bytes());
                central.extend_from_slice(&(data.len() as u64).to_le_bytes());
            }
        }
        let cd_offset = out.len();
        out.extend_from_slice(&central);
        if zip64 {
            let z64 = out.len();
            out.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[0; 20]);
            out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            out.extend_from_slice(&(central.len() as u64).to_le_bytes());
            out.extend_from_slice(&(cd_offset as u64).to_le_bytes());
            out.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(z64 as u64).to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(&EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let n = if zip64 {
            0xFFFFu16
        } else {
            entries.len() as u16
        };
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        let (size, off) = if zip64 {
            (0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
        } else {
            (central.len() as u32, cd_offset as u32)
        };
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    #[test]
    fn reads_stored_entries() {
        let bytes = build(
            &[("a/data.pkl", b"hello"), ("a/data/0", b"0123456789")],
            false,
        );
        let zip = Archive::new(&bytes).unwrap();
        assert_eq!(zip.entries().len(), 2);
        let e = zip.get("a/data/0").unwrap();
        assert_eq!(&*zip.read(e, 100).unwrap(), b"0123456789");
        assert_eq!(&bytes[e.data.clone()], b"0123456789");
        assert!(looks_like_zip(&bytes));
    }

    #[test]
    fn reads_zip64() {
        let bytes = build(&[("x", b"abc")], true);
        let zip = Archive::new(&bytes).unwrap();
        assert_eq!(&*zip.read(zip.get("x").unwrap(), 10).unwrap(), b"abc");
    }

    #[test]
    fn inflates_deflated_entries() {
        let text = b"class Linear(Module):\n  __parameters__ = [\"weight\", ]\n".repeat(20);
        let packed = miniz_oxide::deflate::compress_to_vec(&text, 6);
        let entry = Entry {
            name: "code".into(),
            method: Method::Deflated,
            data: 0..packed.len(),
            uncompressed_size: text.len() as u64,
            crc32: crc32fast::hash(&text),
            local: 0,
        };
        let zip = Archive {
            bytes: &packed,
            entries: vec![],
            by_name: HashMap::new(),
        };
        assert_eq!(&*zip.read(&entry, 1 << 20).unwrap(), &text[..]);
        assert!(zip.read(&entry, 10).is_err());
        let lying = Entry {
            uncompressed_size: 5,
            ..entry.clone()
        };
        assert!(zip.read(&lying, 1 << 20).is_err());
        let damaged = Entry {
            crc32: entry.crc32 ^ 1,
            ..entry
        };
        let e = zip.read(&damaged, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("CRC-32"), "{e}");
    }

    #[test]
    fn checks_the_crc_of_what_it_reads() {
        let bytes = build(&[("a/data.pkl", b"hello")], false);
        let data = Archive::new(&bytes)
            .unwrap()
            .get("a/data.pkl")
            .unwrap()
            .data
            .clone();
        let mut bad = bytes.clone();
        bad[data.start] ^= 0x20;
        let zip = Archive::new(&bad).unwrap();
        let e = zip.read(zip.get("a/data.pkl").unwrap(), 100).unwrap_err();
        assert!(e.to_string().contains("CRC-32"), "{e}");
    }

    #[test]
    fn refuses_overlapping_entries() {
        // Two central entries for the same local record: a small file declaring many large ones.
        let bytes = build(&[("a", b"0123456789"), ("b", b"x")], false);
        let zip = Archive::new(&bytes).unwrap();
        let b_local = zip.get("b").unwrap().local as u32;
        let cd = zip.get("b").unwrap().data.end;
        let mut bad = bytes.clone();
        // The first central entry's local-header offset (byte 42 of the entry) -> b's record.
        bad[cd + 42..cd + 46].copy_from_slice(&b_local.to_le_bytes());
        let e = Archive::new(&bad).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn refuses_every_truncation() {
        let bytes = build(
            &[("a/data.pkl", b"hello"), ("a/data/0", b"0123456789")],
            false,
        );
        for len in 0..bytes.len() {
            assert!(Archive::new(&bytes[..len]).is_err(), "length {len}");
        }
        let bytes = build(&[("x", b"abc")], true);
        for len in 0..bytes.len() {
            assert!(Archive::new(&bytes[..len]).is_err(), "zip64 length {len}");
        }
    }

    #[test]
    fn survives_corruption() {
        let bytes = build(
            &[("a/data.pkl", b"hello"), ("a/data/0", b"0123456789")],
            true,
        );
        for at in 0..bytes.len() {
            for value in [0u8, 0xFF, 0x7F] {
                let mut bad = bytes.clone();
                bad[at] = value;
                if let Ok(zip) = Archive::new(&bad) {
                    for e in zip.entries() {
                        let _ = zip.read(e, 1 << 20);
                    }
                }
            }
        }
    }
}
