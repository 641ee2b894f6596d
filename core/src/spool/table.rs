//! The index's tables, kept in unnamed files in the spool directory instead of the heap.
//!
//! A [`Table`] is a growable array of plain fixed-size records (the index's message and recipient
//! slots). With a directory it lives in a shared memory map of an `O_TMPFILE` file there: its pages
//! are the page cache's, which the kernel writes back and drops under memory pressure like the
//! segments' pages, so the process's anonymous memory does not grow with the number of queued
//! messages. The file has no name, so it disappears with the process (`kill -9` included); the index
//! is rebuilt from the segments at every open, so nothing in it needs to survive.
//!
//! Space is reserved with `fallocate` before a mapping grows over it: a write through a mapping into
//! a hole on a full disk would be a SIGBUS, a failed `fallocate` is an error. Any failure (a full
//! disk, a file system without `O_TMPFILE` or `fallocate`, a failed `mmap`) moves the table to the
//! heap, where it stays: the index keeps working, only its memory is no longer paged.
//!
//! Not done: shrinking a mapped table (a sweep builds a new, right-sized one instead).

use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// A record that may be stored as raw bytes in a mapped table.
///
/// # Safety
/// The type must be `#[repr(C)]`, hold only integer fields (every bit pattern, zero included, is a
/// valid value) and have an alignment of at most 8 (a mapping is page-aligned).
pub unsafe trait Plain: Copy + 'static {}

/// The smallest mapped table: 64 KiB.
const MIN_MAPPED_BYTES: usize = 64 << 10;

/// Where the tables of one index are kept.
#[derive(Debug, Clone, Default)]
pub struct Backing {
    /// The directory for the unnamed files; `None` keeps tables on the heap.
    pub dir: Option<Arc<Path>>,
}

/// A growable array of `T` (see the module documentation).
pub struct Table<T: Plain> {
    dir: Option<Arc<Path>>,
    store: Store<T>,
}

enum Store<T: Plain> {
    Heap(Vec<T>),
    Mapped {
        /// Owned so that the mapping's file lives as long as the table.
        file: File,
        map: MmapMut,
        len: usize,
        cap: usize,
        _t: PhantomData<T>,
    },
}

impl<T: Plain> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl<T: Plain> Default for Table<T> {
    fn default() -> Self {
        Table::new(&Backing::default())
    }
}

impl<T: Plain> Table<T> {
    /// An empty table kept as `backing` says (nothing is allocated until the first push).
    pub fn new(backing: &Backing) -> Table<T> {
        Table {
            dir: backing.dir.clone(),
            store: Store::Heap(Vec::new()),
        }
    }

    /// An empty table with room for `n` records.
    pub fn with_capacity(backing: &Backing, n: usize) -> Table<T> {
        let mut t = Table::new(backing);
        t.reserve(n);
        t
    }

    /// Whether the table lives in a mapped file (false on the heap).
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Mapped { .. })
    }

    /// Records the table has room for without growing.
    pub fn capacity(&self) -> usize {
        match &self.store {
            Store::Heap(v) => v.capacity(),
            Store::Mapped { cap, .. } => *cap,
        }
    }

    /// Bytes of the heap the table holds (0 when mapped).
    pub fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Heap(v) => v.capacity() * size_of::<T>(),
            Store::Mapped { .. } => 0,
        }
    }

    /// Appends a record.
    pub fn push(&mut self, t: T) {
        if self.len() == self.capacity() {
            self.reserve(1);
        }
        match &mut self.store {
            Store::Heap(v) => v.push(t),
            Store::Mapped { map, len, cap, .. } => {
                debug_assert!(*len < *cap);
                let slots = slots_mut::<T>(map, *cap);
                slots[*len] = t;
                *len += 1;
            }
        }
    }

    /// Appends the records of an iterator.
    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        let items = items.into_iter();
        self.reserve(items.size_hint().0);
        for t in items {
            self.push(t);
        }
    }

    /// Appends a slice of records.
    pub fn extend_from_slice(&mut self, items: &[T]) {
        self.extend(items.iter().copied());
    }

    /// Makes room for `more` records beyond the current length.
    pub fn reserve(&mut self, more: usize) {
        let need = self.len().saturating_add(more);
        if need <= self.capacity() {
            return;
        }
        let want = need.max(self.capacity().saturating_mul(2));
        if let Some(dir) = self.dir.clone() {
            let bytes = want
                .saturating_mul(size_of::<T>())
                .max(MIN_MAPPED_BYTES)
                .next_multiple_of(4096);
            match self.grow_mapped(&dir, bytes) {
                Ok(()) => return,
                // Paging the index is an optimisation; the heap always works.
                Err(_) => self.dir = None,
            }
        }
        self.move_to_heap();
        if let Store::Heap(v) = &mut self.store {
            v.reserve(want - v.len());
        }
    }

    /// Grows (or creates) the mapped file to `bytes` and maps it. On failure the table is as it was.
    fn grow_mapped(&mut self, dir: &Path, bytes: usize) -> std::io::Result<()> {
        let cap = bytes / size_of::<T>();
        match &mut self.store {
            Store::Mapped {
                file,
                map,
                cap: old_cap,
                ..
            } => {
                // The old mapping is dropped here; the records are in the file, which the new one
                // maps whole.
                *map = map_file(file, bytes)?;
                *old_cap = cap;
            }
            Store::Heap(v) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_TMPFILE)
                    .open(dir)?;
                let mut map = map_file(&file, bytes)?;
                slots_mut::<T>(&mut map, cap)[..v.len()].copy_from_slice(v);
                let len = v.len();
                self.store = Store::Mapped {
                    file,
                    map,
                    len,
                    cap,
                    _t: PhantomData,
                };
            }
        }
        Ok(())
    }

    /// Moves a mapped table to the heap (copying its records); a heap table stays as it is.
    fn move_to_heap(&mut self) {
        if let Store::Mapped { .. } = self.store {
            let v = self.to_vec();
            self.store = Store::Heap(v);
        }
    }

    /// Drops spare capacity of a heap table (a mapped one keeps its file).
    pub fn shrink_to_fit(&mut self) {
        if let Store::Heap(v) = &mut self.store {
            v.shrink_to_fit();
        }
    }
}

/// Reserves `bytes` of `file` on disk and maps them, shared and writable.
fn map_file(file: &File, bytes: usize) -> std::io::Result<MmapMut> {
    super::segment::fallocate(file, bytes as u64)?;
    // SAFETY: the file was created unnamed (`O_TMPFILE`) by a table and is reachable only through
    // its descriptor, which the table owns: no other process or code can write or truncate it, so the
    // bytes under the mapping change only through the mapping itself. Its `bytes` are allocated on
    // disk (`fallocate` above), so no write through the mapping can fault for want of space.
    unsafe { MmapOptions::new().len(bytes).map_mut(file) }
}

fn slots<T: Plain>(map: &MmapMut, cap: usize) -> &[T] {
    assert!(cap * size_of::<T>() <= map.len());
    assert_eq!(map.as_ptr() as usize % align_of::<T>(), 0);
    // SAFETY: `T: Plain` is a `repr(C)` record of integers, valid for any bytes; the mapping is
    // page-aligned (checked above for `T`'s alignment) and holds `cap` records (checked above); the
    // slice borrows the mapping, so it cannot outlive it.
    unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<T>(), cap) }
}

fn slots_mut<T: Plain>(map: &mut MmapMut, cap: usize) -> &mut [T] {
    assert!(cap * size_of::<T>() <= map.len());
    assert_eq!(map.as_ptr() as usize % align_of::<T>(), 0);
    // SAFETY: as in `slots`; the borrow is exclusive because it comes from `&mut MmapMut`.
    unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<T>(), cap) }
}

impl<T: Plain> Deref for Table<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.store {
            Store::Heap(v) => v,
            Store::Mapped { map, len, cap, .. } => &slots::<T>(map, *cap)[..*len],
        }
    }
}

impl<T: Plain> DerefMut for Table<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.store {
            Store::Heap(v) => v,
            Store::Mapped { map, len, cap, .. } => &mut slots_mut::<T>(map, *cap)[..*len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    struct Rec {
        a: u32,
        b: u16,
        c: u8,
    }

    // SAFETY: `repr(C)`, integer fields only, alignment 4.
    unsafe impl Plain for Rec {}

    fn rec(i: usize) -> Rec {
        Rec {
            a: i as u32,
            b: (i * 7) as u16,
            c: (i % 251) as u8,
        }
    }

    #[test]
    fn a_mapped_table_grows_and_keeps_its_records() {
        let dir = crate::TestDir::created("table-grow");
        let backing = Backing {
            dir: Some(Arc::from(dir.0.as_path())),
        };
        let mut t: Table<Rec> = Table::new(&backing);
        assert!(t.is_empty());
        for i in 0..100_000 {
            t.push(rec(i));
        }
        assert!(
            t.is_mapped(),
            "O_TMPFILE and fallocate work in the test directory"
        );
        assert_eq!(t.heap_bytes(), 0);
        assert_eq!(t.len(), 100_000);
        assert!((0..100_000).all(|i| t[i] == rec(i)));
        t[5].a = 99;
        assert_eq!(t[5].a, 99);
        // Nothing named is left in the directory.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
        let mut u: Table<Rec> = Table::with_capacity(&backing, 10);
        u.extend_from_slice(&t[..3]);
        assert_eq!(&u[..], &t[..3]);
    }

    #[test]
    fn without_a_directory_or_with_a_bad_one_the_table_is_on_the_heap() {
        let mut t: Table<Rec> = Table::default();
        t.extend((0..1000).map(rec));
        assert!(!t.is_mapped());
        assert!(t.heap_bytes() >= 1000 * size_of::<Rec>());
        let gone = Backing {
            dir: Some(Arc::from(Path::new("/nonexistent/vmta-table"))),
        };
        let mut t: Table<Rec> = Table::new(&gone);
        t.extend((0..1000).map(rec));
        assert!(!t.is_mapped());
        assert!((0..1000).all(|i| t[i] == rec(i)));
    }
}
