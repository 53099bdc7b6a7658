//! File-system facts and durability steps the download needs: free space, directory fsync.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes an unprivileged process may still write in the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let c_path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        )
    })?;
    // SAFETY: `statvfs` is plain old data, all-zero is a valid value for it.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(Error::io(dir, std::io::Error::last_os_error()));
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let free = u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize));
    Ok(free)
}

/// Fails with a clear message when `needed` more bytes do not fit beside `dir`.
pub fn ensure_free_space(dir: &Path, needed: u64, url: &str) -> Result<()> {
    let free = free_bytes(dir)?;
    if free < needed {
        return Err(Error::Download {
            url: url.to_string(),
            msg: format!(
                "not enough disk space in {}: {} needed, {} free",
                dir.display(),
                human_bytes(needed),
                human_bytes(free)
            ),
        });
    }
    Ok(())
}

/// Makes a rename inside `dir` durable (the directory entry itself is fsynced).
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| Error::io(dir, e))?;
    handle.sync_all().map_err(|e| Error::io(dir, e))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_temp_dir_is_positive() {
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
    }

    #[test]
    fn refuses_what_cannot_fit() {
        let err = ensure_free_space(&std::env::temp_dir(), u64::MAX, "http://x/y").unwrap_err();
        assert!(err.to_string().contains("not enough disk space"), "{err}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
