//! `vmta serve`: the engine as a daemon that existing mailers relay their mail through over SMTP.
//!
//! ```text
//!  client ──SMTP──► listener thread (mio; smtp::server::Session per connection)
//!                     │ complete message
//!                     ▼
//!                   intake queue (bounded; full = 451 4.3.0)
//!                     │ every waiting message in one Engine::submit_batch (one group commit)
//!                     ▼
//!                   engine shards ── spool ── delivery
//!                     │ durable: the queue id goes back to the listener thread, which says 250
//!                     ▼
//!  event log ◄── engine events + received/refused lines (JSON lines; SIGHUP reopens)
//! ```
//!
//! The daemon uses only the engine's public API (the one the C ABI wraps); the engine knows nothing
//! of it. What it adds lives here: [`config`] (listeners beside the engine's own TOML), [`listener`]
//! (mio threads driving the sans-IO server sessions, relay and recipient decisions), [`intake`]
//! (batched submission, `250` only once durable) and [`log`].
//!
//! Signals: SIGTERM and SIGINT stop accepting, let transactions in progress finish within
//! `[serve] shutdown_grace_s` (sessions between commands are answered `421 4.3.2`), shut the engine
//! down (everything acknowledged stays in the spool) and return; SIGHUP reopens the event log and
//! reloads the configuration file ([`Reloader`]; also `POST /api/v1/reload`).
//!
//! Listeners offer STARTTLS or implicit TLS with a certificate; the `submission` role takes logins
//! ([`users`]: argon2 hashes, checked on a thread of their own, failed logins slowed then refused
//! per address) and submits under the login's tenant. An `[http]` table adds the HTTP API ([`http`]:
//! injection, Prometheus metrics, suppressions) on threads of its own. The control socket
//! ([`control`]) takes reloads, suppression edits and cancellations from `vmta reload`,
//! `vmta suppress --config` and `vmta queue --remove`. Not here yet: reloading a listener's
//! address or limits (named as needing a restart).

pub mod config;
pub mod control;
pub mod http;
pub mod intake;
pub mod listener;
pub mod log;
pub mod stats;
pub mod users;

use config::ServeConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use vmta::engine::Engine;

/// Why `vmta serve` could not start or stopped with an error.
#[derive(Debug)]
pub struct ServeError(pub String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}

/// Reloads the configuration file into the running daemon: SIGHUP and `POST /api/v1/reload`.
#[derive(Debug)]
pub struct Reloader {
    engine: Arc<Engine>,
    log: Arc<log::EventLog>,
    running: std::sync::Mutex<ServeConfig>,
    /// The `[[user]]` logins are checked against.
    users: Arc<users::Users>,
    /// The listeners' and the HTTP API's certificates.
    certs: Vec<CertSlot>,
    /// The HTTP API, for its `[[api_token]]`.
    api: std::sync::OnceLock<Arc<http::Api>>,
}

impl Reloader {
    /// Reads the file again and applies what a running daemon can take: through `Engine::reload`
    /// shaping rules, bounce rules and tenants; here `[[user]]` (the next login), `[[api_token]]`
    /// (the next request) and the certificates of listeners and the HTTP API, read again from
    /// their files (the next handshake). What needs a restart (the engine's other sections,
    /// `[serve]`, listeners' other settings, `[http]`'s other settings) is named and left as it
    /// is. A file that does not parse or check, or a certificate that does not load, is refused
    /// with its reason and nothing changes. Logs a `reload` (or `reload-refused`) line and
    /// returns it.
    pub fn reload(&self) -> Result<serde_json::Value, serde_json::Value> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let refused = |error: String| {
            let v = serde_json::json!({"event": "reload-refused", "error": error});
            self.log.write_lines([v.to_string().as_str()]);
            self.log.flush();
            v
        };
        let Some(path) = running.path.clone() else {
            return Err(refused("the configuration was not read from a file".into()));
        };
        let new = ServeConfig::from_file(&path).map_err(|e| refused(e.to_string()))?;
        // Check everything this daemon applies before the engine applies its part: all or nothing.
        let users = if format!("{:?}", running.users) != format!("{:?}", new.users) {
            Some(users::UserTable::new(new.users.clone()).map_err(refused)?)
        } else {
            None
        };
        let mut certs = Vec::new();
        for slot in &self.certs {
            let (cert, key) = read_pair(&slot.cert, &slot.key)
                .map_err(|e| refused(format!("{}: {e}", slot.what)))?;
            let loaded = slot.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if (&cert, &key) != (&loaded.0, &loaded.1) {
                let parsed = vmta::smtp::tls::ServerCert::parse(&cert, &key)
                    .map_err(|e| refused(format!("{}: {e}", slot.what)))?;
                certs.push((slot, parsed, cert, key));
            }
        }
        let report = self.engine.reload(&new.engine).map_err(|e| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            refused(config::locate(&path, &text, &e.to_string()))
        })?;
        let mut applied = report.applied;
        let mut needs_restart = report.needs_restart;
        if let Some(users) = users {
            self.users.replace(users);
            applied.push("user".into());
        }
        let tokens = |c: &ServeConfig| c.http.as_ref().map(|h| format!("{:?}", h.tokens));
        if tokens(&running) != tokens(&new)
            && let (Some(api), Some(h)) = (self.api.get(), &new.http)
        {
            api.replace_tokens(&h.tokens);
            applied.push("api_token".into());
        }
        if !certs.is_empty() {
            for (slot, parsed, cert, key) in certs {
                slot.store.replace(parsed);
                *slot.loaded.lock().unwrap_or_else(|e| e.into_inner()) = (cert, key);
            }
            applied.push("certificate".into());
        }
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let http_rest = |c: &ServeConfig| {
            c.http
                .as_ref()
                .map(|h| format!("{:?} {:?} {:?}", h.section, h.address, h.tls_files))
        };
        for (name, changed) in [
            ("serve", differs(&running.serve, &new.serve)),
            ("listener", differs(&running.listeners, &new.listeners)),
            ("http", http_rest(&running) != http_rest(&new)),
        ] {
            if changed {
                needs_restart.push(name.to_string());
            }
        }
        running.engine = new.engine;
        running.users = new.users;
        if let (Some(r), Some(n)) = (running.http.as_mut(), new.http) {
            r.tokens = n.tokens;
        }
        let v = serde_json::json!({
            "event": "reload",
            "file": path.display().to_string(),
            "applied": applied,
            "needs_restart": needs_restart,
        });
        self.log.write_lines([v.to_string().as_str()]);
        self.log.flush();
        Ok(v)
    }
}

/// Signals as flags: set by the signal handlers (or a test), read by [`run`].
#[derive(Debug, Default, Clone)]
pub struct Signals {
    /// SIGTERM or SIGINT: shut down.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: reopen the event log.
    pub hup: Arc<AtomicBool>,
}

impl Signals {
    /// Flags set by SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> Result<Signals, ServeError> {
        let s = Signals::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, s.stop.clone())
                .map_err(|e| ServeError(format!("cannot handle signal {sig}: {e}")))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, s.hup.clone())
            .map_err(|e| ServeError(format!("cannot handle SIGHUP: {e}")))?;
        Ok(s)
    }
}

/// Binds the listeners, starts the engine and serves until `signals.stop` is set. `ready` is called
/// once every listener accepts connections.
pub fn run(
    config: &ServeConfig,
    signals: &Signals,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    // Bind first: a port in use is refused before the spool is opened.
    let mut std_listeners = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let s = std::net::TcpListener::bind(l.address)
            .map_err(|e| ServeError(format!("cannot listen on {}: {e}", l.address)))?;
        s.set_nonblocking(true)
            .map_err(|e| ServeError(format!("cannot listen on {}: {e}", l.address)))?;
        std_listeners.push(s);
    }
    let mut certs = Vec::new();
    let http_listener = match &config.http {
        None => None,
        Some(h) => {
            let s = listen(h.address, 1024)
                .map_err(|e| ServeError(format!("cannot listen on {} (http): {e}", h.address)))?;
            let tls = match &h.tls_files {
                None => None,
                Some((cert, key)) => Some(tls_config(config, cert, key, "http", &mut certs)?),
            };
            Some((s, tls))
        }
    };
    let stats = Arc::new(stats::Stats::default());
    let log = Arc::new(log::EventLog::open(&config.serve.event_log).map_err(ServeError)?);
    if let Some(missing) = config.listeners.iter().find(|l| {
        // A submission listener's tenant comes from each login.
        l.role == config::Role::Relay
            && !config.engine.tenants.is_empty()
            && !config.engine.tenants.iter().any(|t| t.name == l.tenant)
    }) {
        return Err(ServeError(format!(
            "listener {}: tenant `{}` is not among the [[tenant]] tables",
            missing.address, missing.tenant
        )));
    }
    let mut tls = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        tls.push(match &l.tls_files {
            None => None,
            Some((cert, key)) => Some(tls_config(
                config,
                cert,
                key,
                &format!("listener {}", l.address),
                &mut certs,
            )?),
        });
    }
    let engine = Arc::new(Engine::start(&config.engine).map_err(|e| {
        ServeError(match &config.path {
            Some(p) => config::locate(
                p,
                &std::fs::read_to_string(p).unwrap_or_default(),
                &format!("engine: {e}"),
            ),
            None => format!("engine: {e}"),
        })
    })?);
    let threads = config.serve.listener_threads;
    let mut polls = Vec::with_capacity(threads);
    let mut mailboxes = Vec::with_capacity(threads);
    for _ in 0..threads {
        let poll = mio::Poll::new().map_err(|e| ServeError(format!("poll: {e}")))?;
        let waker = mio::Waker::new(poll.registry(), mio::Token(0))
            .map_err(|e| ServeError(format!("poll: {e}")))?;
        mailboxes.push(intake::Mailbox {
            done: std::sync::Mutex::new(Vec::new()),
            waker,
        });
        polls.push(poll);
    }
    let mailboxes = Arc::new(mailboxes);
    let (jobs_tx, jobs_rx) = crossbeam::channel::bounded(config.serve.intake_queue);
    let users = Arc::new(users::Users::new(config.users.clone()).map_err(ServeError)?);
    let limiter = Arc::new(users::Limiter::new(users::Limits {
        free: config.serve.auth_failures_free,
        max: config.serve.auth_failures_max.max(1),
        lockout: Duration::from_secs(config.serve.auth_lockout_s),
    }));
    let takes_logins = config
        .listeners
        .iter()
        .any(|l| l.role == config::Role::Submission);
    let (auth_tx, auth_rx) = crossbeam::channel::bounded::<users::AuthJob>(1024);
    let verifier = if takes_logins {
        let (u, l, m) = (users.clone(), limiter.clone(), mailboxes.clone());
        Some(
            std::thread::Builder::new()
                .name("vmta-auth".into())
                .spawn(move || users::run_verifier(auth_rx, u, l, m))
                .map_err(|e| ServeError(format!("thread: {e}")))?,
        )
    } else {
        drop(auth_rx);
        None
    };
    let connections: Vec<Arc<AtomicUsize>> = config
        .listeners
        .iter()
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let shared = Arc::new(listener::Shared {
        engine: engine.clone(),
        listeners: config.listeners.iter().cloned().map(Arc::new).collect(),
        sessions: config
            .listeners
            .iter()
            .map(|l| Arc::new(l.session.clone()))
            .collect(),
        connections: connections.clone(),
        per_client: std::sync::Mutex::new(Default::default()),
        jobs: jobs_tx,
        mailboxes: mailboxes.clone(),
        log: log.clone(),
        stopping: AtomicBool::new(false),
        grace: Duration::from_secs(config.serve.shutdown_grace_s),
        tls,
        auth_jobs: takes_logins.then_some(auth_tx),
        limiter,
        received_auth: config.serve.received_auth,
        stats: stats.clone(),
    });
    let mut intakes = Vec::new();
    for i in 0..config.serve.intake_threads {
        let (e, rx, mb, lg, st) = (
            engine.clone(),
            jobs_rx.clone(),
            mailboxes.clone(),
            log.clone(),
            stats.clone(),
        );
        intakes.push(
            std::thread::Builder::new()
                .name(format!("vmta-intake-{i}"))
                .spawn(move || intake::run(e, rx, mb, lg, st))
                .map_err(|e| ServeError(format!("thread: {e}")))?,
        );
    }
    drop(jobs_rx);
    let reloader = Arc::new(Reloader {
        engine: engine.clone(),
        log: log.clone(),
        running: std::sync::Mutex::new(config.clone()),
        users: users.clone(),
        certs,
        api: std::sync::OnceLock::new(),
    });
    // Without the control socket (a path over the 108 bytes a Unix socket takes, say) the daemon
    // still runs: SIGHUP and the HTTP API reload it.
    let control = match control::Control::start(
        control::socket_path(&config.engine.engine.spool_dir),
        reloader.clone(),
        engine.clone(),
    ) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("vmta serve: {e} (`vmta reload` will not reach this daemon; SIGHUP does)");
            None
        }
    };
    let events_stop = Arc::new(AtomicBool::new(false));
    let events_thread = {
        let (e, lg, stop, hup, st, rl) = (
            engine.clone(),
            log.clone(),
            events_stop.clone(),
            signals.hup.clone(),
            stats.clone(),
            reloader.clone(),
        );
        std::thread::Builder::new()
            .name("vmta-events".into())
            .spawn(move || events_loop(&e, &lg, &st, &rl, &stop, &hup))
            .map_err(|e| ServeError(format!("thread: {e}")))?
    };
    let mut listeners_threads = Vec::new();
    for (t, poll) in polls.into_iter().enumerate() {
        let mut sockets = Vec::new();
        for s in &std_listeners {
            let c = s
                .try_clone()
                .map_err(|e| ServeError(format!("listener: {e}")))?;
            sockets.push(mio::net::TcpListener::from_std(c));
        }
        let sh = shared.clone();
        listeners_threads.push(
            std::thread::Builder::new()
                .name(format!("vmta-listen-{t}"))
                .spawn(move || listener::run(t, sh, poll, sockets))
                .map_err(|e| ServeError(format!("thread: {e}")))?,
        );
    }
    drop(std_listeners);
    let http = match (http_listener, &config.http) {
        (Some((socket, tls)), Some(h)) => {
            let names = config
                .listeners
                .iter()
                .map(|l| l.name.clone())
                .zip(connections.iter().cloned())
                .collect();
            let mut api = http::Api::new(
                engine.clone(),
                stats.clone(),
                log.clone(),
                h,
                config.engine.engine.spool_dir.clone(),
                names,
            );
            api.reloader = Some(reloader.clone());
            let api = Arc::new(api);
            let _ = reloader.api.set(api.clone());
            Some(http::HttpServer::start(api, socket, tls)?)
        }
        _ => None,
    };
    ready();
    while !signals.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        if listeners_threads.iter().any(|t| t.is_finished()) {
            break;
        }
    }
    // Shut down: listeners finish their sessions, intake answers what it holds, the engine stops.
    if let Some(h) = http {
        h.stop();
    }
    shared.stopping.store(true, Ordering::Release);
    for m in mailboxes.iter() {
        let _ = m.waker.wake();
    }
    let mut failure = None;
    for t in listeners_threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(format!("listener: {e}")),
            Err(_) => failure = Some("a listener thread panicked".into()),
        }
    }
    drop(shared);
    for t in intakes {
        let _ = t.join();
    }
    if let Some(v) = verifier {
        let _ = v.join();
    }
    drop(control);
    engine.shutdown(Duration::from_secs(5));
    events_stop.store(true, Ordering::Release);
    let _ = events_thread.join();
    log.flush();
    match failure {
        Some(f) => Err(ServeError(f)),
        None => Ok(()),
    }
}

/// A non-blocking listening socket with room for `backlog` connections not yet accepted (a crowd
/// arriving at once is queued by the kernel rather than dropped and retried a second later).
fn listen(addr: std::net::SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The rustls configuration from a certificate chain and key named in the configuration, and the
/// slot through which a reload replaces them.
fn tls_config(
    config: &ServeConfig,
    cert: &std::path::Path,
    key: &std::path::Path,
    what: &str,
    slots: &mut Vec<CertSlot>,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let (cert, key) = (config.path(cert), config.path(key));
    let (cert_pem, key_pem) =
        read_pair(&cert, &key).map_err(|e| ServeError(format!("{what}: {e}")))?;
    let (server, store) = vmta::smtp::tls::reloadable_server_config(&cert_pem, &key_pem)
        .map_err(|e| ServeError(format!("{what}: {e}")))?;
    slots.push(CertSlot {
        what: what.to_string(),
        cert,
        key,
        loaded: std::sync::Mutex::new((cert_pem, key_pem)),
        store,
    });
    Ok(server)
}

fn read_pair(cert: &std::path::Path, key: &std::path::Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    Ok((read(cert)?, read(key)?))
}

/// A listener's (or the HTTP API's) certificate: the files it came from, their contents when
/// last loaded, and where a new one is put in force.
#[derive(Debug)]
struct CertSlot {
    what: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
    store: Arc<vmta::smtp::tls::ServerCert>,
}

/// Copies the engine's events to the log until `stop`, then drains what is left.
fn events_loop(
    engine: &Engine,
    log: &log::EventLog,
    stats: &stats::Stats,
    reloader: &Reloader,
    stop: &AtomicBool,
    hup: &AtomicBool,
) {
    let mut events = Vec::with_capacity(1024);
    let mut lines: Vec<String> = Vec::with_capacity(1024);
    let enabled = log.is_enabled();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        engine.wait(Duration::from_millis(200));
        events.clear();
        engine.poll_events(&mut events, 1024);
        stats.events(&events);
        if enabled {
            lines.extend(events.iter().map(|e| e.to_json()));
            log.write_lines(lines.iter().map(String::as_str));
            lines.clear();
        }
        if hup.swap(false, Ordering::AcqRel) {
            // SIGHUP: a new log file (after rotation), then the configuration read again.
            if let Err(e) = log.reopen() {
                eprintln!("vmta serve: {e}");
            }
            match reloader.reload() {
                Ok(v) => eprintln!("vmta serve: reloaded: {v}"),
                Err(v) => eprintln!("vmta serve: reload refused: {v}"),
            }
        }
        log.flush();
        if stopping && events.is_empty() {
            return;
        }
    }
}
