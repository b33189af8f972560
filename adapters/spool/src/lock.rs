//! [`SpoolLock`]: one process per spool, held with an OS file lock.
//!
//! The lock is `flock(2)`-style (std's [`File::try_lock`]): the operating
//! system releases it when the process dies, however it dies (`kill -9`
//! included), so a restarted process can always take it back. It is per
//! open file, so a second open in the same process is refused too.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::SpoolError;
use crate::config::lock_path;

/// The held lock of one spool; released on drop.
#[derive(Debug)]
pub(crate) struct SpoolLock {
    file: File,
    path: PathBuf,
}

impl SpoolLock {
    /// Takes the lock of the spool at `spool` (`<spool>.lock`), or fails
    /// with [`SpoolError::Locked`] naming the path and the holder's pid.
    pub(crate) fn acquire(spool: &Path) -> Result<SpoolLock, SpoolError> {
        let path = lock_path(spool);
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let holder = file
                    .read_to_string(&mut holder)
                    .ok()
                    .map(|_| holder.trim().to_owned())
                    .filter(|h| !h.is_empty());
                return Err(SpoolError::Locked {
                    path: spool.to_owned(),
                    lock: path,
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        // Who holds it, for the next one's error message.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(SpoolLock { file, path })
    }

    /// The lock file.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolLock {
    fn drop(&mut self) {
        if let Err(error) = self.file.unlock() {
            tracing::debug!(path = ?self.path, %error, "unlocking the spool lock file failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_path_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("s.db");
        let held = SpoolLock::acquire(&spool).unwrap();
        assert_eq!(held.path(), dir.path().join("s.db.lock"));
        let err = SpoolLock::acquire(&spool).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SpoolError::Locked { .. }), "{text}");
        assert!(text.contains("s.db.lock"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(held);
        SpoolLock::acquire(&spool).unwrap();
    }
}
