//! The partial file of an interrupted download and what makes resuming it safe.
//!
//! `<file>.part` holds the bytes received so far; `<file>.part.meta` records the URL, the total
//! size and the server's validator (a strong ETag or Last-Modified) of the response they came
//! from. A resume sends `Range` with `If-Range: <validator>`, so a file that changed on the server
//! comes back whole (200) instead of being spliced onto old bytes. Both files live beside the final
//! file (same file system, so the final rename is atomic) and are only touched under its lock:
//! whatever is found there is the leftover of a process that died, resumed or cleaned up.

use crate::error::{Error, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

const MAGIC: &str = "clipfast-partial 1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validator {
    /// A strong entity tag, quotes included (weak ones cannot guard a byte range).
    ETag(String),
    /// The `Last-Modified` date, verbatim.
    LastModified(String),
}

impl Validator {
    /// The strongest validator a response offers, if any.
    pub fn from_headers(etag: Option<&str>, last_modified: Option<&str>) -> Option<Self> {
        if let Some(tag) = etag.map(str::trim) {
            if !tag.is_empty() && !tag.starts_with("W/") {
                return Some(Validator::ETag(tag.to_string()));
            }
        }
        last_modified
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| Validator::LastModified(v.to_string()))
    }

    /// The value of an `If-Range` header.
    pub fn header_value(&self) -> &str {
        match self {
            Validator::ETag(v) | Validator::LastModified(v) => v,
        }
    }

    /// False when a response shows the same kind of validator with another value: the file changed.
    pub fn agrees_with(&self, etag: Option<&str>, last_modified: Option<&str>) -> bool {
        match self {
            Validator::ETag(v) => etag.map(str::trim).is_none_or(|seen| seen == v),
            Validator::LastModified(v) => last_modified.map(str::trim).is_none_or(|seen| seen == v),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialMeta {
    pub url: String,
    pub total: Option<u64>,
    pub validator: Validator,
}

impl PartialMeta {
    fn encode(&self) -> String {
        let (kind, value) = match &self.validator {
            Validator::ETag(v) => ("etag", v),
            Validator::LastModified(v) => ("last-modified", v),
        };
        let total = self.total.map(|t| t.to_string()).unwrap_or_default();
        format!("{MAGIC}\nurl {}\ntotal {total}\n{kind} {value}\n", self.url)
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let url = lines.next()?.strip_prefix("url ")?.to_string();
        let total_text = lines.next()?.strip_prefix("total")?.trim();
        let total = if total_text.is_empty() {
            None
        } else {
            Some(total_text.parse().ok()?)
        };
        let line = lines.next()?;
        let validator = if let Some(v) = line.strip_prefix("etag ") {
            Validator::ETag(v.to_string())
        } else {
            Validator::LastModified(line.strip_prefix("last-modified ")?.to_string())
        };
        Some(Self {
            url,
            total,
            validator,
        })
    }
}

pub struct Partial {
    pub part: PathBuf,
    pub meta: PathBuf,
}

impl Partial {
    pub fn for_dest(dest: &Path) -> Self {
        let mut part = dest.as_os_str().to_owned();
        part.push(".part");
        let mut meta = part.clone();
        meta.push(".meta");
        Self {
            part: PathBuf::from(part),
            meta: PathBuf::from(meta),
        }
    }

    /// The leftover of an earlier attempt that can be resumed from `url`: its record and length.
    /// Anything else found there (no record, another URL, a damaged record) is deleted.
    pub fn take_resumable(&self, url: &str) -> Result<Option<(PartialMeta, u64)>> {
        let meta = fs::read_to_string(&self.meta)
            .ok()
            .and_then(|text| PartialMeta::decode(&text));
        let len = match fs::metadata(&self.part) {
            Ok(md) if md.is_file() => Some(md.len()),
            _ => None,
        };
        match (meta, len) {
            (Some(meta), Some(len))
                if meta.url == url && len > 0 && meta.total.is_none_or(|t| len <= t) =>
            {
                Ok(Some((meta, len)))
            }
            _ => {
                self.discard()?;
                Ok(None)
            }
        }
    }

    pub fn save_meta(&self, meta: &PartialMeta) -> Result<()> {
        fs::write(&self.meta, meta.encode()).map_err(|e| Error::io(&self.meta, e))
    }

    pub fn forget_meta(&self) -> Result<()> {
        remove_if_present(&self.meta)
    }

    /// Removes both files (absent ones are fine).
    pub fn discard(&self) -> Result<()> {
        remove_if_present(&self.part)?;
        remove_if_present(&self.meta)
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_etag_wins_weak_is_skipped() {
        assert_eq!(
            Validator::from_headers(Some("\"abc\""), Some("Tue, 01 Jan 2030 00:00:00 GMT")),
            Some(Validator::ETag("\"abc\"".into()))
        );
        assert_eq!(
            Validator::from_headers(Some("W/\"abc\""), Some("Tue, 01 Jan 2030 00:00:00 GMT")),
            Some(Validator::LastModified(
                "Tue, 01 Jan 2030 00:00:00 GMT".into()
            ))
        );
        assert_eq!(Validator::from_headers(Some("W/\"abc\""), None), None);
    }

    #[test]
    fn changed_validator_is_seen() {
        let v = Validator::ETag("\"1\"".into());
        assert!(v.agrees_with(Some("\"1\""), None));
        assert!(v.agrees_with(None, Some("x")));
        assert!(!v.agrees_with(Some("\"2\""), None));
    }

    #[test]
    fn meta_round_trip_and_damage() {
        let meta = PartialMeta {
            url: "http://127.0.0.1:1/a/b.pt".into(),
            total: Some(123),
            validator: Validator::LastModified("Tue, 01 Jan 2030 00:00:00 GMT".into()),
        };
        assert_eq!(PartialMeta::decode(&meta.encode()), Some(meta.clone()));
        let unknown_total = PartialMeta {
            total: None,
            ..meta
        };
        assert_eq!(
            PartialMeta::decode(&unknown_total.encode()),
            Some(unknown_total)
        );
        assert_eq!(PartialMeta::decode("garbage"), None);
        assert_eq!(
            PartialMeta::decode("clipfast-partial 1\nurl x\ntotal zz\netag \"1\"\n"),
            None
        );
    }

    #[test]
    fn resumable_only_for_same_url() {
        let dir = std::env::temp_dir().join(format!("clipfast-partial-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let partial = Partial::for_dest(&dir.join("m.pt"));
        fs::write(&partial.part, b"12345").unwrap();
        let meta = PartialMeta {
            url: "u1".into(),
            total: Some(10),
            validator: Validator::ETag("\"e\"".into()),
        };
        partial.save_meta(&meta).unwrap();
        assert_eq!(partial.take_resumable("u1").unwrap(), Some((meta, 5)));
        assert_eq!(partial.take_resumable("u2").unwrap(), None);
        assert!(!partial.part.exists() && !partial.meta.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
