//! The control socket: a Unix socket (mode 0600) beside the spool, `<spool_dir>/vmta.sock`, through
//! which commands reach the running daemon (`vmta reload`). One command line in, one JSON line out.
//!
//! Commands: `reload` (read the configuration file again, as SIGHUP: the answer is the `reload` or
//! `reload-refused` line). Anything else is answered `{"error": ...}`.
//!
//! Not here yet: suppression edits and queue removal through the socket (`vmta suppress` and
//! `vmta queue --remove` still open the files themselves).

use crate::Reloader;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the control socket of a daemon whose spool is `spool_dir` lives.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("vmta.sock")
}

/// The running control socket; removed when dropped.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Control {
    /// Binds the socket (replacing a stale one: the spool lock already guarantees no other daemon
    /// runs on this spool) and answers commands on a thread of its own.
    pub fn start(path: PathBuf, reloader: Arc<Reloader>) -> Result<Control, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmta-control".into())
            .spawn(move || serve(listener, reloader, s))
            .map_err(|e| format!("thread: {e}"))?;
        Ok(Control {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, reloader: Arc<Reloader>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => answer(stream, &reloader),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads one command (at most 4 KiB, within 5 s) and writes its answer.
fn answer(stream: UnixStream, reloader: &Reloader) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(read) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(std::io::Read::take(read, 4096));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = match line.trim() {
        "reload" => match reloader.reload() {
            Ok(v) | Err(v) => v,
        },
        other => serde_json::json!({"error": format!("unknown command {other:?}; known: reload")}),
    };
    let mut w = stream;
    let _ = writeln!(w, "{reply}");
}

/// Sends `command` to the daemon whose control socket is `path`; its JSON answer.
pub fn send(path: &Path, command: &str) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("no running vmta serve answers on {} ({e})", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    writeln!(s, "{command}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    serde_json::from_str(line.trim()).map_err(|e| format!("the answer {line:?} is not JSON: {e}"))
}
