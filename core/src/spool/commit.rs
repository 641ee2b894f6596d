//! Group commit: many appended records, one `fdatasync`.
//!
//! Every append to the spool gets a [`Ticket`], a number that grows by one per append. The
//! [`Durability`] handle turns tickets into durable ones with a leader/follower protocol: the first
//! thread that needs ticket `t` made durable and finds no flush running becomes the leader, notes the
//! newest ticket appended so far, releases the lock and calls `fdatasync` on the active segment; every
//! thread that arrives meanwhile waits on the condition variable. When the flush returns, everything up
//! to the leader's target is durable, all waiters wake, those covered return, and one of the others
//! leads the next flush, which covers everything appended during the previous one. Under load, one
//! flush therefore acknowledges a whole batch of submissions, whichever threads made them.
//!
//! A failed flush is not retried on the same file: after an `fdatasync` error Linux may already have
//! dropped the dirty pages (the "fsyncgate" lesson), so the tickets it covered are reported failed, the
//! handle is marked poisoned and the spool moves its appends to a fresh segment.

use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Identifies one append; durable once the spool's durable ticket reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ticket(pub u64);

#[derive(Debug)]
struct State {
    file: Option<Arc<File>>,
    appended: u64,
    durable: u64,
    /// The newest ticket the committer thread was asked to make durable.
    requested: u64,
    syncing: bool,
    syncs: u64,
    failure: Option<(u64, u64, io::ErrorKind)>,
    poisoned: bool,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// The error for ticket `t` when the failed flush (or write) recorded in `st` covered it.
fn failed(st: &State, t: Ticket) -> Option<io::Error> {
    let (lo, hi, kind) = st.failure?;
    (t.0 > lo && t.0 <= hi).then(|| io::Error::new(kind, "fdatasync of the spool segment failed"))
}

/// A cloneable, `Send + Sync` handle that waits for tickets to become durable (group commit).
#[derive(Debug, Clone)]
pub struct Durability {
    shared: Arc<Shared>,
}

impl Durability {
    pub(crate) fn new() -> Durability {
        Durability {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    file: None,
                    appended: 0,
                    durable: 0,
                    requested: 0,
                    syncing: false,
                    syncs: 0,
                    failure: None,
                    poisoned: false,
                    closed: false,
                }),
                cv: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent (every update is a
        // single assignment), so a poisoned mutex is still usable.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that ticket `t` was appended to the current file (called by the spool after `pwrite`).
    pub(crate) fn appended(&self, t: Ticket) {
        let mut st = self.lock();
        st.appended = st.appended.max(t.0);
    }

    /// Records that tickets `first..=last` were never written (a write-behind `pwrite` failed):
    /// waiting for any of them returns the error; the tickets before them are flushed as usual.
    pub(crate) fn fail(&self, first: u64, last: u64, kind: io::ErrorKind) {
        let mut st = self.lock();
        st.failure = Some((first.saturating_sub(1), last, kind));
        st.appended = st.appended.max(last);
        self.shared.cv.notify_all();
    }

    /// Makes `file` the one flushed from now on. Everything appended before must already be durable
    /// (or the policy must not care): the spool flushes the old segment before it switches.
    pub(crate) fn set_file(&self, file: Option<Arc<File>>) {
        let mut st = self.lock();
        while st.syncing {
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.file = file;
        st.poisoned = false;
    }

    /// True after a failed flush, until the spool switches to a fresh segment.
    pub(crate) fn poisoned(&self) -> bool {
        self.lock().poisoned
    }

    /// The newest durable ticket.
    pub fn durable(&self) -> Ticket {
        Ticket(self.lock().durable)
    }

    /// The newest appended ticket.
    pub fn appended_ticket(&self) -> Ticket {
        Ticket(self.lock().appended)
    }

    /// Number of `fdatasync` calls made by group commit so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Blocks until ticket `t` is durable (sharing the flush with every other waiter), or returns the
    /// error of the flush that covered it.
    pub fn wait(&self, t: Ticket) -> io::Result<()> {
        let mut st = self.lock();
        loop {
            if let Some(e) = failed(&st, t) {
                return Err(e);
            }
            if st.durable >= t.0 {
                return Ok(());
            }
            if st.syncing {
                st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st = self.lead(st);
        }
    }

    /// Performs one flush as leader: called with the lock held and no flush running.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.syncing = true;
        let target = st.appended;
        let file = st.file.clone();
        drop(st);
        let r = match &file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        };
        let mut st = self.lock();
        st.syncing = false;
        if file.is_some() {
            st.syncs += 1;
        }
        match r {
            Ok(()) => st.durable = st.durable.max(target),
            Err(e) => {
                let lo = st.durable;
                st.failure = Some((lo, target, e.kind()));
                st.durable = st.durable.max(target);
                st.poisoned = true;
            }
        }
        self.shared.cv.notify_all();
        st
    }

    /// Asks the committer thread ([`Durability::run_committer`]) to make ticket `t` durable, without
    /// waiting; [`Durability::ready`] tells when it is.
    pub(crate) fn request(&self, t: Ticket) {
        let mut st = self.lock();
        if t.0 > st.requested {
            st.requested = t.0;
            self.shared.cv.notify_all();
        }
    }

    /// Whether ticket `t` is durable: `None` while its flush is still to come, the error of the
    /// flush that covered it otherwise.
    pub(crate) fn ready(&self, t: Ticket) -> Option<io::Result<()>> {
        let st = self.lock();
        match failed(&st, t) {
            Some(e) => Some(Err(e)),
            None => (st.durable >= t.0).then_some(Ok(())),
        }
    }

    /// The loop of a committer thread: leads a flush whenever a ticket was requested and is not yet
    /// durable, and calls `flushed` after each (the owner's wake-up), until closed. Requests made
    /// during a flush are covered by the next one, so the flushes grow with the load.
    pub(crate) fn run_committer(&self, flushed: &dyn Fn()) {
        let mut st = self.lock();
        loop {
            if st.closed {
                return;
            }
            if st.requested > st.durable && st.appended > st.durable && !st.syncing {
                st = self.lead(st);
                drop(st);
                flushed();
                st = self.lock();
                continue;
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Flushes everything appended so far.
    pub fn flush(&self) -> io::Result<()> {
        let t = self.appended_ticket();
        self.wait(t)
    }

    /// The loop of the interval flusher thread: every `every`, flush if anything is pending.
    pub(crate) fn run_interval(&self, every: Duration) {
        let mut st = self.lock();
        let mut next = Instant::now() + every;
        loop {
            if st.closed {
                return;
            }
            let now = Instant::now();
            if now < next {
                let (g, _) = self
                    .shared
                    .cv
                    .wait_timeout(st, next - now)
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                continue;
            }
            next = now + every;
            if st.appended > st.durable && !st.syncing {
                st = self.lead(st);
            }
        }
    }

    /// Stops the interval flusher.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        self.shared.cv.notify_all();
    }
}
