//! Lock files: an `flock(2)` on a file that holds the writer's pid, so that one process at a time
//! writes a spool directory or a suppression log, and a second one is told who holds it.
//!
//! `flock` locks belong to the open file description, so they are released when the last copy of
//! the descriptor closes, also when the process is killed; they do not work on network file
//! systems. A child forked by another thread shares the descriptor until its `exec` (close-on-exec
//! only closes it there): [`PidLock::take`] waits briefly for a lock that names our own pid but that
//! this process no longer holds.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// An exclusive (writer) or shared (reader) `flock` on a lock file holding the writer's pid.
#[derive(Debug)]
pub struct PidLock {
    _file: Option<fs::File>,
    /// The lock file's (device, inode) while this process holds it exclusively.
    held: Option<(u64, u64)>,
}

/// Lock files this process holds exclusively, by (device, inode). A lock that reads as held by our
/// own pid but is not in this set was released by us a moment ago and lives on in a child process
/// forked by another thread between its `fork` and `exec` (a close-on-exec descriptor is still
/// shared in that window); it goes away by itself, so `take` waits briefly for it.
static HELD_HERE: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// How long `take` waits for a lock our own process released but a forking child still shares.
const INHERITED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn held_here() -> std::sync::MutexGuard<'static, Vec<(u64, u64)>> {
    HELD_HERE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for PidLock {
    fn drop(&mut self) {
        if let Some(key) = self.held.take() {
            held_here().retain(|k| *k != key);
        }
    }
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; the pid it wrote, if readable.
    Held(Option<u32>),
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

impl PidLock {
    /// Takes the lock on the file `path` without waiting (but for a lock this process let go of a
    /// moment ago, see `HELD_HERE`). A writer takes it exclusively, creating the file, and writes
    /// its pid into it; a reader takes it shared, and a missing file means no writer ever ran.
    pub fn take(path: &Path, exclusive: bool) -> Result<PidLock, LockError> {
        let path = path.to_path_buf();
        let file = match OpenOptions::new()
            .read(true)
            .write(exclusive)
            .create(exclusive)
            .truncate(false)
            .open(&path)
        {
            Ok(f) => f,
            // No writer ever took this lock: nothing to share it with.
            Err(e) if !exclusive && e.kind() == io::ErrorKind::NotFound => {
                return Ok(PidLock {
                    _file: None,
                    held: None,
                });
            }
            Err(e) => return Err(LockError::Io(e)),
        };
        let meta = file.metadata().map_err(LockError::Io)?;
        let key = (meta.dev(), meta.ino());
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        let started = std::time::Instant::now();
        loop {
            // SAFETY: `flock` takes a descriptor and an integer; `file` outlives the call.
            let r = unsafe { libc::flock(file.as_raw_fd(), op) };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Io(e));
            }
            let pid: Option<u32> = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let inherited = pid == Some(std::process::id()) && !held_here().contains(&key);
            if !inherited || started.elapsed() >= INHERITED_LOCK_WAIT {
                return Err(LockError::Held(pid));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if exclusive {
            file.set_len(0).map_err(LockError::Io)?;
            file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
                .map_err(LockError::Io)?;
            held_here().push(key);
        }
        Ok(PidLock {
            _file: Some(file),
            held: exclusive.then_some(key),
        })
    }
}
