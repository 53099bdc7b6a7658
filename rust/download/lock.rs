//! A cross-process lock per file: `flock` on `<file>.lock`, so N processes that need the same
//! download run it once (the others wait, then find the verified file).
//!
//! The lock file is never deleted: removing it while another process waits on it would let two
//! processes hold "the" lock at once.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct FileLock {
    path: PathBuf,
    file: File,
    held: bool,
}

impl FileLock {
    /// Opens (creating it if needed) the lock file; does not lock yet.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            held: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// One non-blocking attempt; `Ok(false)` when another process (or handle) holds it.
    pub fn try_lock(&mut self) -> Result<bool> {
        if self.held {
            return Ok(true);
        }
        // SAFETY: the descriptor belongs to `self.file`, which is open for the whole call.
        let rc = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            self.held = true;
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(code) if code == libc::EWOULDBLOCK || code == libc::EINTR => Ok(false),
            _ => Err(Error::io(&self.path, err)),
        }
    }

    pub fn unlock(&mut self) -> Result<()> {
        if !self.held {
            return Ok(());
        }
        // SAFETY: the descriptor belongs to `self.file`, which is open for the whole call.
        let rc = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        self.held = false;
        if rc != 0 {
            return Err(Error::io(&self.path, std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock anyway; unlock first to be explicit.
        let _ = self.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_handle_waits_until_first_releases() {
        let dir = std::env::temp_dir().join(format!("clipfast-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let mut a = FileLock::open(&path).unwrap();
        let mut b = FileLock::open(&path).unwrap();
        assert!(a.try_lock().unwrap());
        assert!(!b.try_lock().unwrap());
        a.unlock().unwrap();
        assert!(b.try_lock().unwrap());
        drop(b);
        assert!(a.try_lock().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
