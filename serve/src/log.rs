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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_a_file_and_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("vmta-serve-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let log = EventLog::open(path.to_str().unwrap()).unwrap();
        assert!(log.is_enabled());
        log.write_lines([r#"{"event":"one"}"#]);
        log.flush();
        std::fs::rename(&path, dir.join("old")).unwrap();
        log.reopen().unwrap();
        log.write_lines([r#"{"event":"two"}"#]);
        log.flush();
        assert_eq!(
            std::fs::read_to_string(dir.join("old")).unwrap(),
            "{\"event\":\"one\"}\n"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"event\":\"two\"}\n"
        );
        assert!(!EventLog::open("").unwrap().is_enabled());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
