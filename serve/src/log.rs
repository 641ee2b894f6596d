//! The daemon's JSON-lines event log: the engine's delivery events and the daemon's own (messages
//! received, refused, connections refused), to standard output or to a file reopened on SIGHUP (so
//! logrotate can move it away).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug)]
enum Sink {
    None,
    Stdout(BufWriter<std::io::Stdout>),
    File(PathBuf, BufWriter<File>),
}

/// A shared JSON-lines writer.
#[derive(Debug)]
pub struct EventLog {
    sink: Mutex<Sink>,
}

fn open(path: &PathBuf) -> std::io::Result<BufWriter<File>> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, f))
}

impl EventLog {
    /// Opens the log named by `[serve] event_log`: `-` is standard output, empty is none.
    pub fn open(spec: &str) -> Result<EventLog, String> {
        let sink = match spec {
            "" => Sink::None,
            "-" => Sink::Stdout(BufWriter::with_capacity(64 * 1024, std::io::stdout())),
            path => {
                let p = PathBuf::from(path);
                let f = open(&p).map_err(|e| format!("cannot open event log {path}: {e}"))?;
                Sink::File(p, f)
            }
        };
        Ok(EventLog {
            sink: Mutex::new(sink),
        })
    }

    /// Whether lines go anywhere (`event_log = ""` discards them: callers skip formatting them).
    pub fn is_enabled(&self) -> bool {
        !matches!(*self.lock(), Sink::None)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends lines (each without its newline).
    pub fn write_lines<'a>(&self, lines: impl IntoIterator<Item = &'a str>) {
        let mut sink = self.lock();
        let w: &mut dyn Write = match &mut *sink {
            Sink::None => return,
            Sink::Stdout(w) => w,
            Sink::File(_, w) => w,
        };
        for l in lines {
            // A write error (a full disk) loses log lines, never mail; it is not retried.
            let _ = w.write_all(l.as_bytes());
            let _ = w.write_all(b"\n");
        }
    }

    /// Writes buffered lines out.
    pub fn flush(&self) {
        let mut sink = self.lock();
        let _ = match &mut *sink {
            Sink::None => Ok(()),
            Sink::Stdout(w) => w.flush(),
            Sink::File(_, w) => w.flush(),
        };
    }

    /// Flushes and reopens a file log at its path (after logrotate moved it).
    pub fn reopen(&self) -> Result<(), String> {
        let mut sink = self.lock();
        if let Sink::File(path, w) = &mut *sink {
            let _ = w.flush();
            let f = open(path).map_err(|e| format!("cannot reopen {}: {e}", path.display()))?;
            *w = f;
        }
        Ok(())
    }
}

/// Writes `"key":"value"` with JSON string escaping, preceded by a comma unless first.
pub fn field(s: &mut String, key: &str, value: &str) {
    if !s.ends_with('{') {
        s.push(',');
    }
    s.push('"');
    escape(s, key);
    s.push_str("\":\"");
    escape(s, value);
    s.push('"');
}

/// Writes `"key":n`, preceded by a comma unless first.
pub fn number(s: &mut String, key: &str, value: u64) {
    use std::fmt::Write as _;
    if !s.ends_with('{') {
        s.push(',');
    }
    let _ = write!(s, "\"{key}\":{value}");
}

fn escape(s: &mut String, v: &str) {
    use std::fmt::Write as _;
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped() {
        let mut s = String::from("{");
        field(&mut s, "event", "received");
        field(&mut s, "helo", "a\"b\\\n\u{1}");
        number(&mut s, "size", 12);
        s.push('}');
        assert_eq!(
            s,
            r#"{"event":"received","helo":"a\"b\\\n\u0001","size":12}"#
        );
    }
}
