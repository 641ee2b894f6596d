//! The control socket: a Unix socket (mode 0600) beside the spool, `<spool_dir>/vmta.sock`, through
//! which commands reach the running daemon (`vmta reload`, and `vmta suppress --config` and
//! `vmta queue --remove` while a daemon holds the files). One command line in, one JSON line out.
//!
//! A command is the word `reload` or a JSON object `{"command": NAME, ...}`:
//!
//! | command | fields | answer |
//! |---|---|---|
//! | `reload` | | the `reload` or `reload-refused` line (as SIGHUP) |
//! | `suppress-list` | `tenant`? | `{"suppressions": [...]}` |
//! | `suppress-check` | `tenant`, `address`, `stream`? | the entry, or `{"suppressed": false}` |
//! | `suppress-add` | `tenant`, `address`, `stream`?, `reason`?, `expires`? | the entry |
//! | `suppress-remove` | `tenant`, `address`, `stream`? | `{"removed": bool}` |
//! | `suppress-compact` | | `{"compacted": true, "expired_dropped": n}` |
//! | `cancel` | `id` (the queue id of the `250` reply, hex) | `{"cancelled": recipients}` |
//!
//! A change is on disk (per `[suppression] sync`) and in force when its answer is written: the
//! daemon makes it through its engine, which holds the files' locks, so there is one writer. An
//! error is `{"error": ...}`. Anyone who can open the socket (its owner) is trusted.

use crate::Reloader;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vmta::bounce::Reason;
use vmta::engine::Engine;

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
    pub fn start(
        path: PathBuf,
        reloader: Arc<Reloader>,
        engine: Arc<Engine>,
    ) -> Result<Control, String> {
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
            .spawn(move || serve(listener, reloader, engine, s))
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

fn serve(
    listener: UnixListener,
    reloader: Arc<Reloader>,
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => answer(stream, &reloader, &engine),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads one command (at most 64 KiB, within 5 s) and writes its answer.
fn answer(stream: UnixStream, reloader: &Reloader, engine: &Engine) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(read) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(std::io::Read::take(read, 64 << 10));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = command(line.trim(), reloader, engine).unwrap_or_else(|e| json!({"error": e}));
    let mut w = stream;
    let _ = writeln!(w, "{reply}");
}

const KNOWN: &str = "reload, suppress-list, suppress-check, suppress-add, suppress-remove, \
                     suppress-compact, cancel";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Carries out one command line.
fn command(line: &str, reloader: &Reloader, engine: &Engine) -> Result<Value, String> {
    if line == "reload" {
        return Ok(match reloader.reload() {
            Ok(v) | Err(v) => v,
        });
    }
    let v: Value = serde_json::from_str(line)
        .map_err(|_| format!("unknown command {line:?}; known: {KNOWN}"))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let need = |k: &str| text(k).ok_or_else(|| format!("`{k}` is missing or not a string"));
    let name = need("command")?;
    let tenant = text("tenant").unwrap_or("");
    let stream = text("stream");
    match name {
        "reload" => Ok(match reloader.reload() {
            Ok(v) | Err(v) => v,
        }),
        "suppress-list" => {
            let now = now();
            let all = engine
                .suppressions(text("tenant"))
                .map_err(|e| e.to_string())?;
            Ok(json!({"suppressions": all.iter().map(|s| s.to_json(now)).collect::<Vec<_>>()}))
        }
        "suppress-check" => {
            let address = need("address")?;
            Ok(match engine.suppression(tenant, address, stream) {
                Some(h) => json!({
                    "tenant": tenant, "address": address, "stream": stream, "suppressed": true,
                    "reason": h.reason.as_str(), "source": h.source.as_str(),
                    "created": h.created, "expires": h.expires,
                }),
                None => json!({"tenant": tenant, "address": address, "suppressed": false}),
            })
        }
        "suppress-add" => {
            let address = need("address")?;
            let reason = match text("reason") {
                None => Reason::Suppressed,
                Some(r) => Reason::parse(r).ok_or_else(|| format!("unknown reason {r:?}"))?,
            };
            let expires = match v.get("expires") {
                None | Some(Value::Null) => None,
                Some(e) => Some(
                    e.as_u64()
                        .ok_or("`expires` is not a number of Unix seconds")?,
                ),
            };
            let s = engine
                .suppress(tenant, address, stream, reason, expires)
                .map_err(|e| e.to_string())?;
            Ok(s.to_json(now()))
        }
        "suppress-remove" => {
            let address = need("address")?;
            let removed = engine
                .unsuppress(tenant, address, stream)
                .map_err(|e| e.to_string())?;
            Ok(json!({"tenant": tenant, "address": address, "removed": removed}))
        }
        "suppress-compact" => {
            let dropped = engine.compact_suppressions().map_err(|e| e.to_string())?;
            Ok(json!({"compacted": true, "expired_dropped": dropped}))
        }
        "cancel" => {
            let id = need("id")?;
            let id = u64::from_str_radix(id, 16)
                .map_err(|_| format!("{id:?} is not a queue id (hex, as in the 250 reply)"))?;
            Ok(json!({"id": format!("{id:016x}"), "cancelled": engine.cancel(id)}))
        }
        other => Err(format!("unknown command {other:?}; known: {KNOWN}")),
    }
}

/// Sends `command` to the daemon whose control socket is `path`; its JSON answer.
pub fn send(path: &Path, command: &str) -> Result<serde_json::Value, String> {
    let s = UnixStream::connect(path)
        .map_err(|e| format!("no running vmta serve answers on {} ({e})", path.display()))?;
    exchange(s, command)
}

/// [`send`], or `None` when nothing listens on `path` (no daemon: the caller may open the files
/// itself, and their locks tell whether that is safe).
pub fn try_send(path: &Path, command: &str) -> Option<Result<serde_json::Value, String>> {
    let s = UnixStream::connect(path).ok()?;
    Some(exchange(s, command))
}

fn exchange(mut s: UnixStream, command: &str) -> Result<serde_json::Value, String> {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    writeln!(s, "{command}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    serde_json::from_str(line.trim()).map_err(|e| format!("the answer {line:?} is not JSON: {e}"))
}
