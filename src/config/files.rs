//! Opening the files a configuration is read from: the file itself and every
//! `secret_file`.
//!
//! Owns [`open_regular`], the one way the loader opens a file, and
//! [`read_regular`], the one way it reads one: never more than a limit, even
//! from a file that grows while it is read. Invariant: an open never waits (it uses `O_NONBLOCK`, so a FIFO without a writer does not
//! block) and only regular files are read: the type is checked with `fstat` on
//! the opened descriptor, so a FIFO, a device (`/dev/zero` would be read
//! forever) or a socket is refused by name before any byte is read.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

/// Why a file could not be opened for reading.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The operating system refused (not found, permission denied, ...).
    Io(std::io::Error),
    /// It is a directory.
    Directory,
    /// It is something else than a regular file; the text names what
    /// ("a FIFO", "a character device", ...).
    NotRegular(&'static str),
}

/// Opens `path` for reading without blocking, and returns it with its
/// metadata (from the open descriptor) when it is a regular file.
///
/// Errors when the file cannot be opened, or is a directory, a FIFO, a device
/// or a socket.
pub(crate) fn open_regular(path: &Path) -> Result<(File, Metadata), OpenError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // For regular files O_NONBLOCK changes nothing; it only keeps the open
        // of a FIFO from waiting for a writer.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) => {
            // A socket cannot be opened at all (ENXIO): say what it is instead.
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() && !meta.is_dir() => {
                    OpenError::NotRegular(what_it_is(&meta))
                }
                _ => OpenError::Io(e),
            });
        }
    };
    let meta = file.metadata().map_err(OpenError::Io)?;
    if meta.is_file() {
        Ok((file, meta))
    } else if meta.is_dir() {
        Err(OpenError::Directory)
    } else {
        Err(OpenError::NotRegular(what_it_is(&meta)))
    }
}

/// Why a file could not be read by [`read_regular`].
#[derive(Debug)]
pub(crate) enum ReadError {
    /// It could not be opened, or is not a regular file.
    Open(OpenError),
    /// It holds more than the limit given.
    TooLarge,
    /// Reading failed after the open.
    Io(std::io::Error),
}

/// Opens `path` like [`open_regular`] and reads all of it, returning its bytes
/// and metadata.
///
/// Errors like [`open_regular`], with [`ReadError::TooLarge`] when the file
/// holds more than `max` bytes (checked before reading and while reading, so a
/// growing file is never read past the limit), and on a failed read.
pub(crate) fn read_regular(path: &Path, max: u64) -> Result<(Vec<u8>, Metadata), ReadError> {
    let (file, meta) = open_regular(path).map_err(ReadError::Open)?;
    if meta.len() > max {
        return Err(ReadError::TooLarge);
    }
    // Sized once: growing by doubling would hold up to twice the file.
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge);
    }
    Ok((bytes, meta))
}

/// The permission bits of a file (`0o644`); `None` where there are none.
pub(crate) fn mode(meta: &Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.permissions().mode() & 0o7777)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// What a file that is neither regular nor a directory is, for messages.
fn what_it_is(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        } else if t.is_char_device() {
            return "a character device";
        } else if t.is_block_device() {
            return "a block device";
        } else if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "not a file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn regular_files_open_and_everything_else_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(open_regular(&file).is_ok());
        assert!(matches!(
            open_regular(dir.path()),
            Err(OpenError::Directory)
        ));
        assert!(matches!(
            open_regular(Path::new("/dev/null")),
            Err(OpenError::NotRegular("a character device"))
        ));
        assert!(matches!(
            open_regular(&dir.path().join("missing")),
            Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
        assert_eq!(read_regular(&file, 1).unwrap().0, b"x");
        assert!(matches!(read_regular(&file, 0), Err(ReadError::TooLarge)));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 1),
            Err(ReadError::Open(OpenError::NotRegular("a character device")))
        ));
        let socket = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(matches!(
            open_regular(&socket),
            Err(OpenError::NotRegular("a socket"))
        ));
    }
}
