//! Segment files: creation with pre-allocated space, appends with `pwrite`, read-only memory maps,
//! sealing, and the directory lock. This is where the spool's `unsafe` lives (the mmap and three libc
//! calls), each block with its `SAFETY` argument; the index's mapped tables have theirs in `table.rs`.

use super::record::{SEGMENT_HEADER_LEN, SegmentHeader};
use memmap2::{Mmap, MmapOptions};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name of segment `id`.
pub fn file_name(id: u32) -> String {
    format!("{id:08x}.seg")
}

/// The segment id encoded in a file name, if it is a segment file.
pub fn parse_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Makes the directory entries of `dir` durable (after creating, renaming or removing a file).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reserves the first `len` bytes of `file` on disk (`fallocate`): running out of space is an error
/// here, never a SIGBUS later when a mapping writes into a hole.
pub(super) fn fallocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: `fallocate` reads no memory of ours; the descriptor is valid for the call because
    // `file` is borrowed for its duration.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves `len` bytes of disk for `file` ([`fallocate`]). Falls back to `set_len` (a sparse file)
/// on file systems without `fallocate`: segments are written with `pwrite`, never through a mapping.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    match fallocate(file, len) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) =>
        {
            file.set_len(len)
        }
        r => r,
    }
}

fn map(file: &File, len: usize) -> io::Result<Option<Mmap>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only and shared. The file belongs to a spool directory whose
    // exclusive flock we hold (or whose shared lock we hold, read-only), so no other process following
    // the protocol writes or truncates it. Our own writes (`pwrite`) only ever fill bytes beyond
    // `used`, which no reader has borrowed, and the file is only ever shrunk to `used` (`Segment::seal`,
    // which then remaps) or cut back to its last good record: a mapping still shared by a body
    // (`Segment::share`) outlives the cut, but no range handed out reaches beyond those bytes. A process ignoring the lock could still change the bytes under us; the
    // spool validates every record before use, so such a change is detected, not trusted, but truncation
    // by an outsider would raise SIGBUS: the directory must be private to the engine, as documented.
    let m = unsafe { MmapOptions::new().len(len).map(file)? };
    Ok(Some(m))
}

/// A message body held by whoever sends it, valid however the spool changes meanwhile: a range of
/// its segment's mapping (kept mapped while the body lives, even after the segment is compacted,
/// sealed or deleted), or its own bytes.
#[derive(Clone)]
pub struct SharedBody(Shared);

#[derive(Clone)]
enum Shared {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<[u8]>),
}

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Shared::Mapped { map, start, len } => &map[*start..*start + *len],
            Shared::Owned(b) => b,
        }
    }
}

impl SharedBody {
    /// Whether the body is a range of the mapping (not a copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Shared::Mapped { .. })
    }
}

impl std::fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBody")
            .field("len", &self.as_ref().len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// One segment file and its accounting.
#[derive(Debug)]
pub struct Segment {
    /// The segment id.
    pub id: u32,
    /// The open file (shared with the group-commit handle while the segment is active).
    pub file: Arc<File>,
    /// Shared with the bodies handed out by [`Segment::share`], which keep it mapped.
    map: Option<Arc<Mmap>>,
    /// Checksum salt of this segment's records.
    pub salt: u64,
    /// Bytes in use: the header and valid records, held ones included. Appends go here.
    pub used: u64,
    /// Records appended but not yet written (write-behind): they start at file offset `held_at`,
    /// are read from here until written, and reach the file in one `pwrite`.
    held: Vec<u8>,
    held_at: u64,
    /// Size of the file (pre-allocated space included).
    pub capacity: u64,
    /// No more appends (every segment but the active one).
    pub sealed: bool,
    /// Messages whose current record is in this segment and that still have a live recipient.
    pub live_messages: u32,
    /// Bytes of those message records.
    pub live_bytes: u64,
    /// Recipients of live messages whose latest state is recorded in this segment.
    pub state_refs: u32,
    /// Final-state records here that must outlive older segments still holding their message.
    pub final_pins: u32,
    /// Pins this segment holds on younger segments, released when this one is deleted.
    pub unpin_on_delete: Vec<(u32, u32)>,
}

impl Segment {
    /// Creates segment `id` in `dir` with `capacity` bytes reserved, writes and flushes its header, and
    /// makes the new directory entry durable.
    pub fn create(
        dir: &Path,
        id: u32,
        capacity: u64,
        header: SegmentHeader,
    ) -> io::Result<Segment> {
        let path = dir.join(file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let r = (|| {
            preallocate(&file, capacity)?;
            file.write_all_at(&header.encode(), 0)?;
            file.sync_data()?;
            sync_dir(dir)
        })();
        if let Err(e) = r {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let map = map(&file, capacity as usize)?;
        Ok(Segment::with(
            id,
            file,
            map,
            header.salt,
            SEGMENT_HEADER_LEN as u64,
            capacity,
        ))
    }

    /// Opens an existing segment file and maps all of it.
    pub fn open(path: &Path, writable: bool) -> io::Result<(File, Option<Mmap>, u64)> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let len = file.metadata()?.len();
        let map = map(&file, len as usize)?;
        Ok((file, map, len))
    }

    /// Wraps an opened file.
    pub fn with(
        id: u32,
        file: File,
        map: Option<Mmap>,
        salt: u64,
        used: u64,
        capacity: u64,
    ) -> Segment {
        Segment {
            id,
            file: Arc::new(file),
            map: map.map(Arc::new),
            salt,
            used,
            held: Vec::new(),
            held_at: used,
            capacity,
            sealed: false,
            live_messages: 0,
            live_bytes: 0,
            state_refs: 0,
            final_pins: 0,
            unpin_on_delete: Vec::new(),
        }
    }

    /// The path of this segment in `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(file_name(self.id))
    }

    /// The bytes written (header and records), borrowed from the mapping; held records are not
    /// among them.
    pub fn bytes(&self) -> &[u8] {
        let end = if self.held.is_empty() {
            self.used
        } else {
            self.held_at
        };
        match &self.map {
            Some(m) => &m[..(end as usize).min(m.len())],
            None => &[],
        }
    }

    /// The buffer holding the record at file offset `off` and the record's offset in it: the
    /// mapping, or the held records when it is not written yet.
    pub fn read_at(&self, off: u64) -> (&[u8], usize) {
        if !self.held.is_empty() && off >= self.held_at {
            (&self.held, (off - self.held_at) as usize)
        } else {
            (self.bytes(), off as usize)
        }
    }

    /// Bytes held, not yet written.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Puts the mapping back.
    pub fn put_map(&mut self, m: Option<Mmap>) {
        self.map = m.map(Arc::new);
    }

    /// `bytes` (borrowed from this segment) as a body that shares the mapping instead of copying
    /// it, or a copy when they are not in the mapping (held records).
    pub fn share(&self, bytes: &[u8]) -> SharedBody {
        if let Some(m) = &self.map {
            let base = m.as_ptr() as usize;
            let at = bytes.as_ptr() as usize;
            if at >= base && at + bytes.len() <= base + m.len() {
                return SharedBody(Shared::Mapped {
                    map: m.clone(),
                    start: at - base,
                    len: bytes.len(),
                });
            }
        }
        SharedBody(Shared::Owned(bytes.into()))
    }

    /// Room left for appends.
    pub fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
    }

    /// Writes `rec` at the append position. On success the bytes are in the page cache and visible
    /// through the mapping; they are durable after the next `fdatasync`.
    pub fn append(&mut self, rec: &[u8]) -> io::Result<u64> {
        let off = self.hold(rec)?;
        self.write_held()?;
        Ok(off)
    }

    /// Takes `rec` at the append position without writing it: readable through [`Segment::read_at`]
    /// at once, written (with every record held before it) by [`Segment::write_held`].
    pub fn hold(&mut self, rec: &[u8]) -> io::Result<u64> {
        let off = self.used;
        if rec.len() as u64 > self.room() {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "segment full"));
        }
        if self.held.is_empty() {
            self.held_at = off;
        }
        self.held.extend_from_slice(rec);
        self.used += rec.len() as u64;
        Ok(off)
    }

    /// Writes the held records with one `pwrite`. On failure they are dropped: the append position
    /// goes back to where they started, and the caller reports the records as not written.
    pub fn write_held(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all_at(&self.held, self.held_at);
        if r.is_err() {
            self.used = self.held_at;
        }
        self.held.clear();
        self.held_at = self.used;
        r
    }

    /// Overwrites `len` bytes at `from` with zeros and flushes (clears a torn tail in place, without
    /// allocating disk space).
    pub fn zero(&self, from: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = from;
        let end = from + len;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_data()
    }

    /// Stops appends and gives the unused pre-allocated space back: the file is cut to `used` bytes
    /// and remapped. Cutting also removes a torn tail or a partial write after `used`.
    pub fn seal(&mut self) -> io::Result<()> {
        self.sealed = true;
        self.write_held()?;
        if self.capacity != self.used {
            self.map = None;
            self.file.set_len(self.used)?;
            self.capacity = self.used;
            self.map = map(&self.file, self.used as usize)?.map(Arc::new);
        }
        Ok(())
    }
}
