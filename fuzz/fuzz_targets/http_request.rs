//! Raw bytes as one HTTP connection to `vmta serve`'s API: hyper's request parsing, the routes,
//! the tokens, query strings and every endpoint's JSON body, served by a running engine exactly as a
//! TCP connection is (`vmta_serve::http::serve_stream` over an in-memory stream). `@A` and `@T` in
//! the input become an admin and a tenant token, so requests get past the token check.
//!
//! Whatever comes in, every answer must be a well-formed HTTP/1.x response and none may be a 500
//! (a handler that failed), and the connection must end once the client has closed its side.
//!
//! The engine is made once per process (and again every few thousand inputs, so what the inputs
//! queued does not pile up): one shard, no fsync, a spool and a suppression list under a
//! temporary directory, a smarthost on 127.0.70.254:9 where nothing listens.
#![no_main]

mod engine_threads;

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmta::engine::Engine;
use vmta_serve::config::ServeConfig;
use vmta_serve::http::{Api, serve_stream, token_hash};
use vmta_serve::log::EventLog;
use vmta_serve::stats::Stats;

const ADMIN: &str = "vmta_fuzz-admin-token";
const TENANT: &str = "vmta_fuzz-tenant-token";
/// Inputs served by one engine before it is replaced.
const PER_ENGINE: u32 = 5000;

struct World {
    api: Arc<Api>,
    dir: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
    served: u32,
    made: u32,
}

fn world(made: u32) -> World {
    // Under the temporary directory the fuzzing scripts remove (not on /dev/shm, where nothing
    // would remove the last engine's files).
    let dir = std::env::temp_dir().join(format!("vmta-fuzz-http-{}-{made}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        r#"
[engine]
spool_dir = "{spool}"
shards = 1
pin_shards = false
durability = "none"
spool_segment_mb = 1
helo_name = "fuzz.test"
[serve]
[[listener]]
address = "127.0.0.1:2525"
role = "relay"
allowed_networks = ["127.0.0.0/8"]
[http]
max_request_size = 65536
max_messages = 16
[[api_token]]
name = "admin"
sha256 = "{admin}"
[[api_token]]
name = "tenant"
sha256 = "{tenant}"
tenant = "t1"
[smarthost]
address = "127.0.70.254:9"
tls = "disabled"
[retry]
policy = "exponential"
[suppression]
enabled = true
path = "{suppression}"
"#,
        spool = dir.join("spool").display(),
        admin = token_hash(ADMIN),
        tenant = token_hash(TENANT),
        suppression = dir.join("suppressions.log").display(),
    );
    let config = ServeConfig::from_toml(&toml).expect("the fuzz configuration is valid");
    let http = config.http.as_ref().expect("an [http] section");
    let engine = Arc::new(Engine::start(&config.engine).expect("the engine starts"));
    let api = Arc::new(Api::new(
        engine,
        Arc::new(Stats::default()),
        Arc::new(EventLog::open("").unwrap()),
        http,
        dir.join("spool"),
        Vec::new(),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    World {
        api,
        dir,
        runtime,
        served: 0,
        made: made + 1,
    }
}

/// `data` with `@A` and `@T` replaced by the tokens.
fn with_tokens(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut i = 0;
    while i < data.len() {
        match (data[i], data.get(i + 1)) {
            (b'@', Some(b'A')) => {
                out.extend_from_slice(ADMIN.as_bytes());
                i += 2;
            }
            (b'@', Some(b'T')) => {
                out.extend_from_slice(TENANT.as_bytes());
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Checks that `out` is a run of HTTP/1.x responses (1.0 to a 1.0 request), none of them a 500.
fn check_responses(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "a response without the end of its head: {:?}",
                    String::from_utf8_lossy(rest)
                )
            });
        let head = std::str::from_utf8(&rest[..end]).expect("a response head in ASCII");
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        assert!((100..600).contains(&status), "status {status}");
        assert_ne!(status, 500, "a handler failed: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        rest = &rest[end + 4..];
        assert!(
            rest.len() >= length,
            "a body shorter than its Content-Length"
        );
        rest = &rest[length..];
    }
}

fuzz_target!(|data: &[u8]| {
    static WORLD: Mutex<Option<World>> = Mutex::new(None);
    let mut guard = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let made = guard.as_ref().map_or(0, |w| w.made);
    if guard.as_ref().is_none_or(|w| w.served >= PER_ENGINE) {
        if let Some(old) = guard.take() {
            old.api.engine.shutdown(std::time::Duration::ZERO);
            let dir = old.dir.clone();
            drop(old);
            let _ = std::fs::remove_dir_all(dir);
        }
        *guard = Some(world(made));
    }
    let w = guard.as_mut().unwrap();
    w.served += 1;
    let input = with_tokens(data);
    let api = w.api.clone();
    let out = w.runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let peer = "127.0.0.1:40000".parse().unwrap();
        let served = tokio::spawn(serve_stream(api, peer, server));
        let mut out = Vec::new();
        let talk = async {
            // The server may answer and close before reading everything: a write error is fine.
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let _ = client.read_to_end(&mut out).await;
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), talk)
            .await
            .expect("the connection ended after the client closed");
        let _ = served.await;
        out
    });
    check_responses(&out);
});
