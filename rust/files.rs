//! Opening the files clipfast reads (checkpoints, files it hashes).

use std::fs::File;
use std::path::Path;

/// Opens `path` read-only without waiting on it. Opening a FIFO (a named pipe put where a file is
/// expected) for reading otherwise blocks until some process opens it for writing, which may be
/// never; with `O_NONBLOCK` the open returns at once and the caller refuses it as not a regular
/// file. `O_NONBLOCK` changes nothing for a regular file (its reads and its map never block on it).
pub fn open_for_reading(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}
