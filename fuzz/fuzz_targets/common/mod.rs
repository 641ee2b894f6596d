//! What several targets share.

/// A directory for a target's files, `NAME-PID`, on a memory file system when there is one: the
/// file system calls of creating, opening and removing spools each input are most of a target's time
/// on a disk-backed `/tmp` (six times fewer inputs a second for `spool_recovery`).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("{name}-{}", std::process::id()))
}
