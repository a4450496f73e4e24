//! A state file on disk: read with its size capped, replaced atomically and durably.
//!
//! A save writes the new state beside the file (`NAME.tmp`), flushes it to the disk, renames it
//! over the file and flushes the directory, so that after a crash the file holds either the
//! old state or the new one, whole, and a save that returned is not undone by the crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::machine::MAX_EXPORT_BYTES;

/// The file's contents, or `None` when there is none; a file over [`MAX_EXPORT_BYTES`] is
/// refused before it is read.
pub(crate) fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_EXPORT_BYTES as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, over the limit of {MAX_EXPORT_BYTES} for a state file"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow after the size was read: read at most one byte past the limit, so
    // that the parser sees it is too large.
    file.take(MAX_EXPORT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Replaces the file with `bytes`: temporary file, flush, rename, flush of the directory.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary(path);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    sync_directory(path)
}

/// Checks that the file's directory takes a save: writes and flushes the temporary file a
/// save would write, then removes it. The state file itself is left as it is.
pub(crate) fn probe(path: &Path) -> io::Result<()> {
    let temporary = temporary(path);
    {
        let mut file = File::create(&temporary)?;
        file.write_all(b"{}")?;
        file.sync_all()?;
    }
    fs::remove_file(&temporary)
}

/// Takes the state file's lock (`NAME.lock` beside it, an advisory lock of the whole file held
/// as long as the returned file is open): one process, and one machine in it, saves to a state
/// file at a time. Two would write the same temporary file and each replace the other's saves.
/// `Ok(None)`: another holds it.
pub(crate) fn lock(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path(path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The lock file of a state file.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Where a save is written before it replaces the file.
pub(crate) fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Flushes the directory entry of `path`: a rename is durable only once its directory is.
#[cfg(unix)]
fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

/// Other systems cannot open a directory to flush it; their rename is as durable as it gets.
#[cfg(not(unix))]
fn sync_directory(_path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("am-file-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    }

    #[test]
    fn a_replaced_file_reads_back_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("m.json");
        assert!(read(&path).expect("no error").is_none(), "no file yet");
        replace(&path, b"one").expect("saves");
        replace(&path, b"two").expect("saves again");
        probe(&path).expect("the directory takes a save");
        assert_eq!(read(&path).expect("reads").as_deref(), Some(&b"two"[..]));
        assert!(!temporary(&path).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = scratch("large");
        let path = dir.join("m.json");
        let file = File::create(&path).expect("creates");
        // Sparse: the size is claimed, not written.
        file.set_len(MAX_EXPORT_BYTES as u64 + 1)
            .expect("sets the length");
        let err = read(&path).expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_save_into_a_missing_directory_fails_with_the_reason() {
        let dir = scratch("missing");
        let path = dir.join("gone").join("m.json");
        let err = replace(&path, b"x").expect_err("no directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(probe(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
