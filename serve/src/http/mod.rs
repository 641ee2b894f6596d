//! The HTTP API of `vmta serve`: injection, Prometheus metrics and suppression management on one
//! listener, on threads of its own (a tokio runtime with `[http] threads` workers running hyper's
//! HTTP/1.1 server), never on a shard thread.
//!
//! | Method and path                                  | Who           | What                          |
//! |--------------------------------------------------|---------------|-------------------------------|
//! | `POST /api/v1/messages`                          | admin, tenant | inject one or many ([`inject`]) |
//! | `GET /metrics`                                   | admin (or any)| Prometheus text ([`metrics`]) |
//! | `GET`, `POST`, `DELETE /api/v1/suppressions`     | admin, tenant | list, add, remove ([`admin`]) |
//! | `GET /api/v1/queues`                             | admin         | by destination and tenant     |
//! | `GET /api/v1/destinations/{domain}`              | admin         | live state, why it is slow    |
//! | `POST /api/v1/destinations/{domain}/pause`, `/resume` | admin    | hold or release its mail      |
//! | `POST /api/v1/tenants/{tenant}/pause`, `/resume` | admin         | hold or release its mail      |
//! | `POST /api/v1/bounce`                            | admin         | cancel a destination's, tenant's or campaign's queued mail |
//! | `POST /api/v1/reload`                            | admin         | read the configuration file again (as SIGHUP) |
//!
//! `docs/openapi.yaml` describes every request and answer (checked against the running server by
//! schemathesis in the tests). Callers present `Authorization: Bearer
//! <token>`; the configuration holds each token's SHA-256 (`vmta token` makes a token and its hash),
//! so a leaked configuration does not leak tokens. A tenant token acts for its tenant only.
//!
//! Bounds: `[http] max_connections` at once (more are answered 503 and closed), request headers
//! within `header_timeout_s` (slowloris is cut off), the body within `request_timeout_s` and
//! `max_request_size` (413), JSON nested at most 128 deep (serde_json's limit), at most
//! `max_messages` messages per request. HTTP/1.1 only (no HTTP/2); TLS through rustls when a
//! certificate is configured.

pub mod admin;
pub mod inject;
pub mod metrics;

use crate::ServeError;
use crate::config::{ApiToken, Http};
use crate::log::EventLog;
use crate::stats::Stats;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use vmta::engine::Engine;

/// Who is calling, from their token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// `None` for an admin; the tenant a tenant token acts for.
    pub tenant: Option<String>,
}

/// The SHA-256 of a token, as configured.
pub fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token: `vmta_` and 43 URL-safe base64 characters (256 bits).
pub fn new_token() -> String {
    use base64::Engine as _;
    use rand::Rng as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "vmta_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What the request handlers share.
#[derive(Debug)]
pub struct Api {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The daemon's counters.
    pub stats: Arc<Stats>,
    /// The event log (received and refused lines).
    pub log: Arc<EventLog>,
    /// Tokens by SHA-256; replaced whole by a reload.
    tokens: std::sync::RwLock<Arc<HashMap<[u8; 32], Caller>>>,
    /// `[http]`.
    pub config: crate::config::HttpSection,
    /// Whether the listener speaks TLS (the Received field's protocol).
    pub tls: bool,
    /// The spool directory, for the spool size.
    pub spool_dir: PathBuf,
    /// Listener names and their connection counters, for metrics.
    pub listeners: Vec<(String, Arc<std::sync::atomic::AtomicUsize>)>,
    /// Whether tenants are configured (a tenant must then be one of them).
    pub tenants: bool,
    /// Reloads the configuration file (`POST /api/v1/reload`).
    pub reloader: Option<Arc<crate::Reloader>>,
}

impl Api {
    /// The handlers' state.
    pub fn new(
        engine: Arc<Engine>,
        stats: Arc<Stats>,
        log: Arc<EventLog>,
        http: &Http,
        spool_dir: PathBuf,
        listeners: Vec<(String, Arc<std::sync::atomic::AtomicUsize>)>,
    ) -> Api {
        let tokens = std::sync::RwLock::new(Arc::new(token_table(&http.tokens)));
        let tenants = engine.tenants().is_some();
        Api {
            engine,
            stats,
            log,
            tokens,
            config: http.section.clone(),
            tls: http.tls_files.is_some(),
            spool_dir,
            listeners,
            tenants,
            reloader: None,
        }
    }

    /// Puts a new set of `[[api_token]]` in force for the next request.
    pub fn replace_tokens(&self, tokens: &[ApiToken]) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(token_table(tokens));
    }

    /// The caller a request's `Authorization` header names, or the answer refusing it.
    fn caller(&self, req: &Request<Incoming>) -> Result<Caller, Response<Full<Bytes>>> {
        let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else {
            return Err(unauthorized(
                "no Authorization header: send `Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned()
            .ok_or_else(|| unauthorized("unknown token"))
    }
}

/// Tokens by SHA-256 (the configuration checked their form: 64 hex digits).
fn token_table(tokens: &[ApiToken]) -> HashMap<[u8; 32], Caller> {
    tokens
        .iter()
        .filter_map(|t: &ApiToken| {
            let mut h = [0u8; 32];
            for (i, b) in h.iter_mut().enumerate() {
                *b = u8::from_str_radix(t.sha256.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some((
                h,
                Caller {
                    name: t.name.clone(),
                    tenant: (!t.tenant.is_empty()).then(|| t.tenant.clone()),
                },
            ))
        })
        .collect()
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer: `{"error": {"status": .., "message": .., "field": ..}}`.
pub fn error(status: StatusCode, field: Option<&str>, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": {
            "status": status.as_u16(),
            "message": message,
            "field": field,
        }}),
    )
}

/// An error answer with `Retry-After`.
pub fn retry_later(status: StatusCode, seconds: u64, message: &str) -> Response<Full<Bytes>> {
    let mut r = error(status, None, message);
    r.headers_mut()
        .insert(hyper::header::RETRY_AFTER, seconds.into());
    r
}

fn unauthorized(message: &str) -> Response<Full<Bytes>> {
    let mut r = error(StatusCode::UNAUTHORIZED, None, message);
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer realm=\"vmta\""),
    );
    r
}

/// The request body, bounded by size and time.
async fn read_body(
    api: &Api,
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Response<Full<Bytes>>> {
    let max = api.config.max_request_size;
    let too_large = || {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            &format!("the request body is larger than {max} octets (max_request_size)"),
        );
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        r
    };
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let limit = Duration::from_secs(api.config.request_timeout_s);
    match tokio::time::timeout(limit, Limited::new(body, max).collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            None,
            "the request body did not arrive in time (request_timeout_s)",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            None,
            &format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(c)) => Ok((parts, c.to_bytes())),
    }
}

/// Routes one request; counts it under its route and status.
async fn handle(api: Arc<Api>, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (route, response) = route(&api, peer, &method, &path, req).await;
    api.stats.http_request(route, response.status().as_u16());
    response
}

/// The routes: a path pattern (`{name}` takes one segment) and the methods it takes. The pattern
/// is also the `route` label of `vmta_http_requests_total`.
const ROUTES: [(&str, &[&str]); 11] = [
    ("/metrics", &["GET"]),
    ("/api/v1/messages", &["POST"]),
    ("/api/v1/suppressions", &["GET", "POST", "DELETE"]),
    ("/api/v1/queues", &["GET"]),
    ("/api/v1/destinations/{domain}", &["GET"]),
    ("/api/v1/destinations/{domain}/pause", &["POST"]),
    ("/api/v1/destinations/{domain}/resume", &["POST"]),
    ("/api/v1/tenants/{tenant}/pause", &["POST"]),
    ("/api/v1/tenants/{tenant}/resume", &["POST"]),
    ("/api/v1/bounce", &["POST"]),
    ("/api/v1/reload", &["POST"]),
];

/// The route `path` matches and the segment its `{name}` took (percent-decoded), if any.
fn match_route(path: &str) -> Option<(&'static str, &'static [&'static str], Option<String>)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    'routes: for (pattern, methods) in ROUTES {
        let pat: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut param = None;
        for (p, s) in pat.iter().zip(&segs) {
            if p.starts_with('{') {
                let decoded: String = form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if decoded.is_empty() {
                    continue 'routes;
                }
                param = Some(decoded);
            } else if p != s {
                continue 'routes;
            }
        }
        return Some((pattern, methods, param));
    }
    None
}

async fn route(
    api: &Arc<Api>,
    peer: SocketAddr,
    method: &hyper::Method,
    path: &str,
    req: Request<Incoming>,
) -> (&'static str, Response<Full<Bytes>>) {
    let Some((route, methods, param)) = match_route(path) else {
        return (
            "other",
            error(StatusCode::NOT_FOUND, None, "no such endpoint"),
        );
    };
    if !methods.contains(&method.as_str()) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            &format!("{route} does not take {method}"),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(&methods.join(", ")) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        return (route, r);
    }
    if route == "/metrics" && api.config.public_metrics {
        return (route, metrics::answer(api));
    }
    let caller = match api.caller(&req) {
        Ok(c) => c,
        Err(r) => return (route, r),
    };
    let admin_only = !matches!(route, "/api/v1/messages" | "/api/v1/suppressions");
    if admin_only && caller.tenant.is_some() {
        return (
            route,
            error(
                StatusCode::FORBIDDEN,
                None,
                &format!("{route} needs an admin token"),
            ),
        );
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let body = if method == hyper::Method::POST {
        match read_body(api, req).await {
            Ok((_, b)) => b,
            Err(r) => return (route, r),
        }
    } else {
        Bytes::new()
    };
    let response = match (route, method.as_str()) {
        ("/metrics", _) => metrics::answer(api),
        ("/api/v1/messages", _) => inject::answer(api.clone(), &caller, peer, body).await,
        _ => {
            // Everything else may wait on the shards or the suppression log: off the runtime.
            let (api, method) = (api.clone(), method.clone());
            let param = param.unwrap_or_default();
            let done = tokio::task::spawn_blocking(move || {
                admin::answer(&api, &caller, route, &method, &param, &query, &body)
            })
            .await;
            done.unwrap_or_else(|_| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    "the request failed",
                )
            })
        }
    };
    (route, response)
}

/// The running HTTP API.
#[derive(Debug)]
pub struct HttpServer {
    stop: Arc<tokio::sync::Notify>,
    thread: std::thread::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `listener` on a runtime of its own until [`HttpServer::stop`].
    pub fn start(
        api: Arc<Api>,
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<HttpServer, ServeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(api.config.threads)
            .max_blocking_threads(api.config.threads.max(2) * 4)
            .thread_name("vmta-http")
            .enable_all()
            .build()
            .map_err(|e| ServeError(format!("http: {e}")))?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmta-http-accept".into())
            .spawn(move || {
                runtime.block_on(accept_loop(api, listener, tls, s));
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(|e| ServeError(format!("thread: {e}")))?;
        Ok(HttpServer { stop, thread })
    }

    /// Stops accepting, lets requests in progress finish (up to 5 s) and returns.
    pub fn stop(self) {
        self.stop.notify_one();
        let _ = self.thread.join();
    }
}

async fn accept_loop(
    api: Arc<Api>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vmta serve: http: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(api.config.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.notified() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            api.stats
                .http_connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(stream));
            continue;
        };
        let (api, acceptor, closing) = (api.clone(), acceptor.clone(), closing_rx.clone());
        tokio::spawn(async move {
            api.stats
                .http_connections_open
                .fetch_add(1, Ordering::Relaxed);
            let header_timeout = Duration::from_secs(api.config.header_timeout_s);
            match acceptor {
                None => serve_connection(api.clone(), peer, stream, closing).await,
                Some(a) => {
                    if let Ok(Ok(s)) = tokio::time::timeout(header_timeout, a.accept(stream)).await
                    {
                        serve_connection(api.clone(), peer, s, closing).await;
                    }
                }
            }
            api.stats
                .http_connections_open
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    let _ = closing_tx.send(true);
    // Requests in progress get their answers; idle connections close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while slots.available_permits() < api.config.max_connections
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves one HTTP/1.1 connection over any byte stream, as a TCP connection from `peer` is served,
/// until the client closes it: what the `http_request` fuzz target feeds raw bytes through.
pub async fn serve_stream<S>(api: Arc<Api>, peer: SocketAddr, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (_open, closing) = tokio::sync::watch::channel(false);
    serve_connection(api, peer, stream, closing).await;
}

async fn serve_connection<S>(
    api: Arc<Api>,
    peer: SocketAddr,
    stream: S,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = Duration::from_secs(api.config.header_timeout_s);
    let svc = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(api, peer, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closed(&mut closing) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn closed(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// Answers a connection over `max_connections` with 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let body =
        b"{\"error\":{\"status\":503,\"message\":\"too many connections\",\"field\":null}}\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.shutdown().await
    })
    .await;
}
