//! The JSON-lines event log (`[engine] event_log`), written ahead of the spool so that every final
//! outcome is in it exactly once, across crashes too.
//!
//! The protocol, per shard:
//!
//! 1. When the shard records an outcome, it renders the event's line into its buffer
//!    ([`ShardLog::render`]) before the spool record is appended (the spool holds a pass's records
//!    in memory: write-behind).
//! 2. Before the spool writes held records to its file, it calls the shard's [`ShardLog::flush`]:
//!    the shard's mark file (`<shard dir>/events.mark`) first gets the offset and length that the
//!    lines are about to take in the log, then the lines are appended to the log.
//! 3. The spool then writes the records.
//!
//! So a record in the spool always has its line in the log (a line is written before its record),
//! and a line without its record can only be in the last write a shard made before a crash, which
//! its mark names. On open, [`unconfirmed`] reads those ranges back and the shard applies every
//! outcome there whose recipient the spool still has as queued or deferred
//! (`ShardCore::reconcile_log`): the outcome happened (the receiver said 250, say), it is logged,
//! and the recipient is not sent again, so neither the log nor the receiver sees it twice.
//!
//! Writes reach the kernel with `write(2)` (they survive `kill -9`); the log is not `fsync`ed, so
//! after a power loss its tail may miss lines that the spool's committed records hold.
//!
//! Not here: rotation while an engine runs (the engine keeps writing to the file it opened: rotate
//! with copy-and-truncate, or while stopped; a mark naming another file than the log's path now
//! holds is ignored), events that no spool record stands behind (`suppressed` at submission,
//! inbound reports: written when they are released, so a crash at that moment can lose them), and
//! lines whose spool write then failed on a full disk without a crash (the recipient is tried again
//! and logged again).

use super::event::DeliveryEvent;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The log file, shared by the shards and the engine.
#[derive(Debug)]
pub(crate) struct EventLog {
    file: Mutex<LogFile>,
    path: PathBuf,
    /// Writes that failed (the lines are lost; delivery goes on).
    pub errors: AtomicU64,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    /// Bytes in the file: where the next write lands.
    len: u64,
    /// (device, inode), written into marks.
    id: (u64, u64),
}

impl EventLog {
    /// Opens (creating) the log for appending. A last line cut short by a crash is ended with a
    /// newline first, so the next line starts on a line of its own.
    pub fn open(path: &Path) -> io::Result<EventLog> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let meta = file.metadata()?;
        let mut len = meta.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                len += 1;
            }
        }
        Ok(EventLog {
            file: Mutex::new(LogFile {
                file,
                len,
                id: (meta.dev(), meta.ino()),
            }),
            path: path.to_path_buf(),
            errors: AtomicU64::new(0),
        })
    }

    /// Appends `bytes` (whole lines), after writing where they go into `mark` when given.
    fn append(&self, bytes: &[u8], mark: Option<&File>) -> io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mark) = mark {
            let mut m = [0u8; MARK_LEN];
            m[..8].copy_from_slice(&f.len.to_le_bytes());
            m[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            m[16..24].copy_from_slice(&f.id.0.to_le_bytes());
            m[24..32].copy_from_slice(&f.id.1.to_le_bytes());
            mark.write_all_at(&m, 0)?;
        }
        let r = f.file.write_all(bytes);
        // After a failed or partial write the file's length is unknown: ask it.
        f.len = match r {
            Ok(()) => f.len + bytes.len() as u64,
            Err(_) => f.file.metadata().map_or(f.len, |m| m.len()),
        };
        r
    }

    /// Writes lines no spool record stands behind (events made outside the shards).
    pub fn write_events(&self, events: &[DeliveryEvent]) {
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            buf.extend_from_slice(e.to_json().as_bytes());
            buf.push(b'\n');
        }
        if self.append(&buf, None).is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

const MARK_LEN: usize = 32;

/// One shard's side of the log: its rendered lines not yet written, and its mark file.
#[derive(Debug)]
pub(crate) struct ShardLog {
    log: std::sync::Arc<EventLog>,
    buf: Mutex<Vec<u8>>,
    mark: File,
}

impl ShardLog {
    /// The shard's log with its mark file (`<shard dir>/events.mark`).
    pub fn new(log: std::sync::Arc<EventLog>, shard_dir: &Path) -> io::Result<ShardLog> {
        let mark = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(mark_path(shard_dir))?;
        Ok(ShardLog {
            log,
            buf: Mutex::new(Vec::with_capacity(64 << 10)),
            mark,
        })
    }

    /// Renders `event`'s line into the buffer; returns the buffer's length before it, for
    /// [`ShardLog::unrender`].
    pub fn render(&self, event: &DeliveryEvent) -> usize {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let before = b.len();
        b.extend_from_slice(event.to_json().as_bytes());
        b.push(b'\n');
        before
    }

    /// Takes back lines rendered since the buffer was `len` long (their record was refused).
    pub fn unrender(&self, len: usize) {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .truncate(len);
    }

    /// Writes the rendered lines to the log, after the mark that names them.
    pub fn flush(&self) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if b.is_empty() {
            return;
        }
        if self.log.append(&b, Some(&self.mark)).is_err() {
            self.log.errors.fetch_add(1, Ordering::Relaxed);
        }
        b.clear();
    }
}

fn mark_path(shard_dir: &Path) -> PathBuf {
    shard_dir.join("events.mark")
}

/// An outcome read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    /// The event's kind, as logged (`delivered`, `bounced`, `expired`, `cancelled`, `deferred`).
    pub kind: String,
    /// The engine's message id.
    pub message_id: u64,
    /// The recipient's position.
    pub recipient_index: u16,
    /// Attempts made.
    pub attempts: u16,
    /// For `deferred`: the next attempt (Unix seconds).
    pub next_attempt: u64,
    /// The reply, as the spool keeps it (`code enhanced text`).
    pub reply: String,
}

/// The lines of the last write the shard whose directory is `shard_dir` made to the log at
/// `log_path`: those whose spool records may be missing. Nothing when there is no mark, when the
/// mark names another file (the log was rotated) or when the range is not in the file.
pub(crate) fn unconfirmed(log_path: &Path, shard_dir: &Path) -> Vec<Logged> {
    let read = || -> io::Result<Vec<u8>> {
        let mut m = [0u8; MARK_LEN];
        let mark = File::open(mark_path(shard_dir))?;
        mark.read_exact_at(&mut m, 0)?;
        let word = |i: usize| u64::from_le_bytes(m[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let (start, len, dev, ino) = (word(0), word(1), word(2), word(3));
        let mut log = File::open(log_path)?;
        let meta = log.metadata()?;
        if (meta.dev(), meta.ino()) != (dev, ino) || start >= meta.len() || len > 256 << 20 {
            return Ok(Vec::new());
        }
        let len = len.min(meta.len() - start);
        let mut buf = vec![0u8; len as usize];
        log.seek(SeekFrom::Start(start))?;
        log.read_exact(&mut buf)?;
        Ok(buf)
    };
    let bytes = read().unwrap_or_default();
    bytes.split(|&b| b == b'\n').filter_map(parse).collect()
}

/// One log line as an outcome to reconcile (a line cut short by the crash is not one).
fn parse(line: &[u8]) -> Option<Logged> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let kind = v.get("event")?.as_str()?;
    if !matches!(
        kind,
        "delivered" | "bounced" | "expired" | "cancelled" | "deferred"
    ) {
        return None;
    }
    let code = v.get("code").and_then(|c| c.as_u64()).unwrap_or(0);
    let text = v.get("text").and_then(|t| t.as_str()).unwrap_or("");
    let reply = match (code, v.get("enhanced").and_then(|e| e.as_str())) {
        (0, _) => text.to_string(),
        (c, Some(e)) => format!("{c} {e} {text}"),
        (c, None) => format!("{c} {text}"),
    };
    Some(Logged {
        kind: kind.to_string(),
        message_id: u64::from_str_radix(v.get("message_id")?.as_str()?, 16).ok()?,
        recipient_index: u16::try_from(v.get("recipient_index")?.as_u64()?).ok()?,
        attempts: v
            .get("attempts")
            .and_then(|a| a.as_u64())
            .and_then(|a| u16::try_from(a).ok())
            .unwrap_or(1),
        next_attempt: v.get("next_attempt").and_then(|n| n.as_u64()).unwrap_or(0),
        reply,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::EventKind;

    fn event(kind: EventKind, id: u64, index: u16) -> DeliveryEvent {
        DeliveryEvent {
            kind,
            message_id: id,
            recipient_index: index,
            recipient: format!("r{index}@x.example"),
            tenant: "t".into(),
            code: 250,
            enhanced: None,
            text: "ok".into(),
            phase: None,
            reason: String::new(),
            mx: String::new(),
            ip: None,
            source: String::new(),
            attempts: 2,
            next_attempt: 0,
            submitted_at: 1,
            at_ms: 2,
            tags: Vec::new(),
        }
    }

    #[test]
    fn the_mark_names_the_last_write_of_each_shard_and_torn_tails_are_ended() {
        let dir = crate::TestDir::created("eventlog");
        let path = dir.0.join("events.jsonl");
        let log = std::sync::Arc::new(EventLog::open(&path).unwrap());
        let (a, b) = (dir.0.join("a"), dir.0.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let sa = ShardLog::new(log.clone(), &a).unwrap();
        let sb = ShardLog::new(log.clone(), &b).unwrap();
        sa.render(&event(EventKind::Delivered, 1, 0));
        sa.flush();
        sb.render(&event(EventKind::Bounced, 2, 0));
        let undo = sb.render(&event(EventKind::Delivered, 2, 1));
        sb.unrender(undo);
        sb.flush();
        sa.render(&event(EventKind::Delivered, 3, 0));
        sa.render(&event(EventKind::Deferred, 3, 1));
        sa.flush();
        log.write_events(&[event(EventKind::Suppressed, 4, 0)]);
        let got = unconfirmed(&path, &a);
        assert_eq!(
            got.iter()
                .map(|l| (l.kind.as_str(), l.message_id, l.recipient_index))
                .collect::<Vec<_>>(),
            [("delivered", 3, 0), ("deferred", 3, 1)]
        );
        assert_eq!(got[0].reply, "250 ok");
        assert_eq!(got[0].attempts, 2);
        let got = unconfirmed(&path, &b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, "bounced");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        // A line cut short: ended on reopen, skipped when read back.
        drop((sa, sb, log));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"deliv").unwrap();
        let log = EventLog::open(&path).unwrap();
        log.write_events(&[event(EventKind::Delivered, 5, 0)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        assert_eq!(text.lines().count(), 7);
        // No mark, or a mark naming another file: nothing.
        assert!(unconfirmed(&path, &dir.0.join("c")).is_empty());
        let other = dir.0.join("other.jsonl");
        std::fs::copy(&path, &other).unwrap();
        assert!(unconfirmed(&other, &a).is_empty());
    }
}
