//! `vmta serve`'s HTTP API with real clients: curl and Python (`http.client` with keep-alive, raw
//! sockets for hostile input), `/metrics` read by Prometheus's own text parser
//! (`prometheus_client`), every message delivered to a real Postfix `smtp-sink`. Addresses
//! 127.0.99.0/24.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmta_tests::serve::{Daemon, python, python_ok, wait_for};
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_addr, require};

const ADMIN: &str = "vmta_test-admin-token-0123456789abcdef";
const DEMO: &str = "vmta_test-demo-token-0123456789abcdef";

fn hash(token: &str) -> String {
    vmta_serve::http::token_hash(token)
}

/// A daemon with the HTTP API on a free port of `ip`, relaying to `sink`. Tenants `default`
/// (senders at client.test) and `demo` (demo@example.org); an admin token and a `demo` token.
struct Api {
    _daemon: Daemon,
    http: SocketAddr,
    dir: PathBuf,
    scheme: &'static str,
}

fn start(dir: &Path, ip: &str, sink: SocketAddr, http_extra: &str) -> Api {
    start_with(dir, ip, sink, &dir.join("spool"), "shards = 2", http_extra)
}

/// [`start`] with the spool directory and `[engine]` lines given.
fn start_with(
    dir: &Path,
    ip: &str,
    sink: SocketAddr,
    spool: &Path,
    engine_extra: &str,
    http_extra: &str,
) -> Api {
    let http = free_tcp_addr(ip);
    let smtp = free_tcp_addr(ip);
    let text = format!(
        "[engine]\nspool_dir = \"{spool}\"\nhelo_name = \"relay.vmta.test\"\n{engine_extra}\n\
         [serve]\nevent_log = \"{log}\"\nshutdown_grace_s = 5\n\
         [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n[shaping]\nrules = '''\n{unshaped}'''\n\
         [[tenant]]\nname = \"default\"\npool = \"default\"\nsender_domains = [\"client.test\"]\n\
         [[tenant]]\nname = \"demo\"\npool = \"default\"\nsender_addresses = [\"demo@example.org\"]\n\
         [[listener]]\naddress = \"{smtp}\"\nrole = \"relay\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
         [http]\naddress = \"{http}\"\n{http_extra}\n\
         [[api_token]]\nname = \"ops\"\nsha256 = \"{admin}\"\n\
         [[api_token]]\nname = \"demo-app\"\nsha256 = \"{demo}\"\ntenant = \"demo\"\n",
        unshaped = vmta_testworld::world::UNSHAPED,
        spool = spool.display(),
        log = dir.join("events.jsonl").display(),
        admin = hash(ADMIN),
        demo = hash(DEMO),
    );
    let path = dir.join("vmta.toml");
    std::fs::write(&path, text).unwrap();
    Api {
        _daemon: Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &path),
        http,
        dir: dir.to_path_buf(),
        scheme: if http_extra.contains("tls_cert") {
            "https"
        } else {
            "http"
        },
    }
}

impl Api {
    fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" {
            format!("localhost:{}", self.http.port())
        } else {
            self.http.to_string()
        };
        format!("{}://{host}{path}", self.scheme)
    }

    /// `curl` with `args` on `path`: the status and the body.
    fn curl(&self, token: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
        let mut c = Command::new(require("curl"));
        c.args(["-s", "-S", "--max-time", "30", "-w", "\n%{http_code}"]);
        if self.scheme == "https" {
            c.arg("--cacert")
                .arg(self.dir.join("localhost.crt"))
                .arg("--resolve")
                .arg(format!("localhost:{}:{}", self.http.port(), self.http.ip()));
        }
        if let Some(t) = token {
            c.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = c
            .args(args)
            .arg(self.url(path))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or_else(|_| {
                panic!(
                    "curl gave no status: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }),
            body.to_string(),
        )
    }

    fn post(&self, token: Option<&str>, path: &str, json: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.curl(
            token,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                json,
            ],
            path,
        );
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (ok, out) = python(
            METRICS,
            &[
                self.url("/metrics"),
                ADMIN.into(),
                name.into(),
                serde_json::to_string(&labels).unwrap(),
            ],
        );
        assert!(ok, "{out}");
        out.trim().parse().unwrap_or_else(|_| panic!("{out}"))
    }
}

/// Reads /metrics with Prometheus's own parser (which refuses malformed text) and prints the
/// value of the sample named argv[3] with the labels argv[4] (0 when absent).
const METRICS: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
url, token, name, labels = sys.argv[1], sys.argv[2], sys.argv[3], dict(json.loads(sys.argv[4]))
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = r.read().decode()
value, seen = 0.0, set()
for fam in text_string_to_metric_families(text):
    assert fam.name not in seen, "family twice: " + fam.name
    seen.add(fam.name)
    for s in fam.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            value += s.value
for needed in ["vmta_recipients_delivered", "vmta_queue_recipients", "vmta_spool_bytes", "vmta_http_requests", "vmta_listener_messages", "vmta_destination_recipients", "vmta_recipients_bounced"]:
    assert needed in seen, needed + " missing"
print(value)
"#;

/// Python's http.client on one keep-alive connection: argv[3] requests of argv[4] messages each
/// (every one built from subject, text, html and an attachment); prints the ids.
const BATCHES: &str = r#"
import base64, http.client, json, sys
host, port, requests, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
token = sys.argv[5]
c = http.client.HTTPConnection(host, port, timeout=30)
ids = []
for r in range(requests):
    batch = [{
        "sender": "news@client.test",
        "recipients": ["user%d-%d@dest.test" % (r, i)],
        "subject": "Grüße %d-%d" % (r, i),
        "text": "Hello %d\n.a line with a dot\n" % i,
        "html": "<p>Hello %d</p>" % i,
        "headers": {"X-Campaign": "spring"},
        "attachments": [{"filename": "a.bin", "content_type": "application/octet-stream",
                         "content": base64.b64encode(bytes(range(256))).decode()}],
        "tags": {"campaign": "spring"},
    } for i in range(per)]
    c.request("POST", "/api/v1/messages", body=json.dumps(batch),
              headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    resp = c.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 202, (resp.status, body)
    assert body["accepted"] == per and body["refused"] == 0, body
    ids += [m["id"] for m in body["messages"]]
assert len(set(ids)) == len(ids)
print(len(ids))
"#;

/// Checks a message the sink got: MIME as built, the attachment's octets intact.
const CHECK_BUILT: &str = r#"
import email, email.policy, sys
m = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=email.policy.default)
assert m["Subject"].startswith("Grüße"), m["Subject"]
assert m["From"] == "news@client.test", m["From"]
assert m["X-Campaign"] == "spring"
assert m["Message-ID"] and m["Date"] and m["Received"]
assert any(" with HTTP " in r for r in m.get_all("Received")), m.get_all("Received")
assert m.is_multipart()
att = [p for p in m.iter_attachments()]
assert len(att) == 1 and att[0].get_filename() == "a.bin", att
assert att[0].get_content() == bytes(range(256))
body = m.get_body(preferencelist=("plain",)).get_content()
assert ".a line with a dot" in body, body
print("ok")
"#;

#[test]
fn http_injects_messages_and_reports_metrics() {
    let dir = TempDir::new("http-inject");
    let sink = SmtpSink::start("127.0.99.1", &[]);
    let api = start(dir.path(), "127.0.99.1", sink.addr, "");

    // One raw message with curl: LF line ends become CRLF.
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/messages",
        r#"{"sender":"app@client.test","recipients":["one@dest.test","two@dest.test"],
            "raw":"From: app@client.test\nTo: one@dest.test\nSubject: raw\nMessage-ID: <r1@client.test>\nDate: Mon, 7 Dec 2026 10:00:00 +0000\n\nraw body\n"}"#,
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["messages"][0]["id"].as_str().unwrap().len(), 16);

    // 5 requests of 100 built messages on one keep-alive connection.
    let out = python_ok(
        BATCHES,
        &[
            api.http.ip().to_string(),
            api.http.port().to_string(),
            "5".into(),
            "100".into(),
            ADMIN.into(),
        ],
    );
    assert_eq!(out.trim(), "500");
    wait_for("501 messages at the sink", Duration::from_secs(60), || {
        sink.received() >= 501
    });
    let messages = sink.messages();
    let built = messages
        .iter()
        .find(|m| m.contains("X-Campaign"))
        .expect("a built message");
    let path = dir.path().join("built.eml");
    std::fs::write(&path, built).unwrap();
    assert_eq!(
        python_ok(CHECK_BUILT, &[path.display().to_string()]).trim(),
        "ok"
    );
    assert!(messages.iter().any(|m| m.contains("\nraw body\n")));

    wait_for("the deliveries counted", Duration::from_secs(30), || {
        api.metric("vmta_recipients_delivered_total", &[]) >= 502.0
    });
    assert_eq!(api.metric("vmta_recipients_submitted_total", &[]), 502.0);
    assert_eq!(
        api.metric("vmta_http_messages_total", &[("result", "accepted")]),
        501.0
    );
    assert_eq!(
        api.metric(
            "vmta_http_requests_total",
            &[("route", "/api/v1/messages"), ("code", "202")]
        ),
        6.0
    );
    assert_eq!(
        api.metric(
            "vmta_destination_recipients_total",
            &[("domain", "dest.test"), ("outcome", "delivered")]
        ),
        502.0
    );
    // The event log names the way in.
    let log = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let received = log
        .lines()
        .filter(|l| l.contains("\"event\":\"received\"") && l.contains("\"protocol\":\"HTTP\""))
        .count();
    assert_eq!(received, 501, "{log}");
}

#[test]
fn http_refuses_what_it_must_and_queues_nothing_half() {
    let dir = TempDir::new("http-refuse");
    let sink = SmtpSink::start("127.0.99.2", &[]);
    let api = start(
        dir.path(),
        "127.0.99.2",
        sink.addr,
        "max_request_size = 1048576",
    );
    let good =
        r#"{"sender":"demo@example.org","recipients":["a@dest.test"],"subject":"s","text":"t"}"#;

    // Tokens.
    let (code, body) = api.curl(
        None,
        &["-i", "-X", "POST", "--data-binary", good],
        "/api/v1/messages",
    );
    assert_eq!(code, 401);
    assert!(
        body.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{body}"
    );
    let (code, _) = api.post(
        Some("vmta_wrong-token-0123456789"),
        "/api/v1/messages",
        good,
    );
    assert_eq!(code, 401);
    let (code, _) = api.curl(None, &["-H", "Authorization: Basic YTpi"], "/metrics");
    assert_eq!(code, 401);
    // A tenant token sends for its tenant (named or not), never for another.
    let (code, body) = api.post(Some(DEMO), "/api/v1/messages", good);
    assert_eq!(code, 202, "{body}");
    let other = r#"{"tenant":"default","sender":"app@client.test","recipients":["a@dest.test"],"raw":"Subject: x\n\nx\n"}"#;
    let (code, body) = api.post(Some(DEMO), "/api/v1/messages", other);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["field"], "tenant");
    // ... and not as a sender its tenant has not approved.
    let (code, body) = api.post(
        Some(DEMO),
        "/api/v1/messages",
        r#"{"sender":"boss@example.org","recipients":["a@dest.test"],"subject":"s","text":"t"}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["messages"][0]["error"]["code"], "sender_not_approved");
    let (code, _) = api.curl(Some(DEMO), &[], "/metrics");
    assert_eq!(code, 403);

    // Bad requests name the field; nothing of a request with one bad message is queued.
    let before = api.metric("vmta_recipients_submitted_total", &[]);
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/messages",
        r#"[{"sender":"app@client.test","recipients":["a@dest.test"],"raw":"Subject: x\n\nx\n"},
            {"sender":"app@client.test","recipients":["a@dest.test", "not an address"],"raw":"x"}]"#,
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "[1].recipients[1]");
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/messages",
        r#"{"sender":"app@client.test","recipients":["a@dest.test"],"subject":"s","text":"t","headers":{"Bad Name":"x"}}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(body["error"]["field"], "headers.Bad Name");
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/messages",
        r#"{"sender":"app@client.test","recipients":["a@dest.test"],"subject":"s\r\nBcc: x@evil.test","text":"t"}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(body["error"]["field"], "subject");
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/messages",
        r#"{"sender":"app@client.test"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recipients"),
        "{body}"
    );
    let (code, _) = api.post(
        Some(ADMIN),
        "/api/v1/messages",
        &("[".repeat(5000) + &"]".repeat(5000)),
    );
    assert_eq!(code, 400);
    let invalid_utf8 = dir.path().join("bad.json");
    std::fs::write(
        &invalid_utf8,
        b"{\"sender\":\"app@client.test\",\"recipients\":[\"a@dest.test\"],\"raw\":\"Subject: \xff\xfe\\n\\nx\"}",
    )
    .unwrap();
    let (code, body) = api.curl(
        Some(ADMIN),
        &[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", invalid_utf8.display()),
        ],
        "/api/v1/messages",
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(api.metric("vmta_recipients_submitted_total", &[]), before);

    // Routes and methods.
    assert_eq!(api.curl(Some(ADMIN), &[], "/nowhere").0, 404);
    let (code, body) = api.curl(Some(ADMIN), &["-i"], "/api/v1/messages");
    assert_eq!(code, 405);
    assert!(body.to_ascii_lowercase().contains("allow: post"), "{body}");

    // Bodies over max_request_size: declared (answered before it is sent) and chunked.
    let out = python_ok(
        r#"
import http.client, socket, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
s.sendall(("POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Length: 52428800\r\n\r\n" % token).encode())
print(s.recv(4096).split(b"\r\n")[0].decode())
c = http.client.HTTPConnection(host, port, timeout=30)
def chunks():
    for i in range(50):
        yield b"x" * (1 << 20)
try:
    c.request("POST", "/api/v1/messages", body=chunks(), encode_chunked=True,
              headers={"Authorization": "Bearer " + token})
    print(c.getresponse().status)
except (BrokenPipeError, ConnectionResetError):
    print("reset")
"#,
        &[
            api.http.ip().to_string(),
            api.http.port().to_string(),
            ADMIN.into(),
        ],
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("HTTP/1.1 413 Payload Too Large"),
        "{out}"
    );
    let second = lines.next().unwrap_or("");
    assert!(second == "413" || second == "reset", "{out}");
    // Still answering.
    let (code, _) = api.post(Some(DEMO), "/api/v1/messages", good);
    assert_eq!(code, 202);
    wait_for("2 messages at the sink", Duration::from_secs(30), || {
        sink.received() >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.received(), 2);
}

#[test]
fn http_manages_the_suppression_list_over_tls() {
    let dir = TempDir::new("http-suppress");
    vmta_tests::serve::make_cert(dir.path());
    let sink = SmtpSink::start("127.0.99.3", &[]);
    let api = start(
        dir.path(),
        "127.0.99.3",
        sink.addr,
        "tls_cert = \"localhost.crt\"\ntls_key = \"localhost.key\"",
    );
    for i in 0..25 {
        let reason = if i % 5 == 0 {
            "userunknown"
        } else {
            "suppressed"
        };
        let (code, body) = api.post(
            Some(ADMIN),
            "/api/v1/suppressions",
            &format!(r#"{{"tenant":"demo","address":"user{i:02}@dest.test","reason":"{reason}"}}"#),
        );
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["address"], format!("user{i:02}@dest.test"));
    }
    let (code, body) = api.post(
        Some(DEMO),
        "/api/v1/suppressions",
        r#"{"address":"x@dest.test","reason":"no such reason"}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(body["error"]["field"], "reason");
    let (code, _) = api.post(
        Some(DEMO),
        "/api/v1/suppressions",
        r#"{"tenant":"default","address":"x@dest.test"}"#,
    );
    assert_eq!(code, 403);

    // Paged, filtered; the tenant token sees its own tenant.
    let list = |q: &str| {
        let (code, body) = api.curl(Some(DEMO), &[], &format!("/api/v1/suppressions{q}"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let page = list("?limit=10");
    assert_eq!(page["total"], 25);
    assert_eq!(page["suppressions"].as_array().unwrap().len(), 10);
    assert_eq!(page["next_offset"], 10);
    let last = list("?limit=10&offset=20");
    assert_eq!(last["suppressions"].as_array().unwrap().len(), 5);
    assert!(last["next_offset"].is_null());
    let hard = list("?reason=userunknown");
    assert_eq!(hard["total"], 5);
    assert_eq!(
        api.curl(Some(DEMO), &[], "/api/v1/suppressions?limit=0").0,
        400
    );
    assert_eq!(
        api.curl(Some(DEMO), &[], "/api/v1/suppressions?tenant=default")
            .0,
        403
    );

    // A suppressed recipient is refused at injection, with the reason; removed, it goes.
    let msg = r#"{"sender":"demo@example.org","recipients":["user03@dest.test"],"subject":"s","text":"t"}"#;
    let (code, body) = api.post(Some(DEMO), "/api/v1/messages", msg);
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["messages"][0]["error"]["code"], "suppressed");
    let (code, _) = api.curl(
        Some(DEMO),
        &["-X", "DELETE"],
        "/api/v1/suppressions?address=user03%40dest.test",
    );
    assert_eq!(code, 204);
    let (code, _) = api.curl(
        Some(DEMO),
        &["-X", "DELETE"],
        "/api/v1/suppressions?address=user03%40dest.test",
    );
    assert_eq!(code, 404);
    let (code, body) = api.post(Some(DEMO), "/api/v1/messages", msg);
    assert_eq!(code, 202, "{body}");
    wait_for("the message at the sink", Duration::from_secs(30), || {
        sink.received() >= 1
    });
}

/// Opens argv[3] connections at once, sends nothing on them, and checks that the server still
/// answers a request on a new one (or refuses extra connections with 503); then a client sends
/// its headers one byte a second and must be cut off after header_timeout_s.
const HOSTILE: &str = r#"
import http.client, socket, sys, time
host, port, n, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
idle = []
t0 = time.time()
for i in range(n):
    idle.append(socket.create_connection((host, port), timeout=10))
print("opened in", round(time.time() - t0, 2))
time.sleep(0.5)
refused = 0
for s in idle[-50:]:
    s.settimeout(1)
    try:
        if s.recv(100).startswith(b"HTTP/1.1 503"):
            refused += 1
    except socket.timeout:
        pass
print("refused", refused)
c = http.client.HTTPConnection(host, port, timeout=10)
c.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
r = c.getresponse()
print("metrics while crowded", r.status)
r.read()
for s in idle:
    s.close()
time.sleep(0.5)
slow = socket.create_connection((host, port), timeout=20)
start = time.time()
cut = None
for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n":
    try:
        slow.sendall(bytes([b]))
    except (BrokenPipeError, ConnectionResetError):
        cut = time.time() - start
        break
    slow.settimeout(1.0)
    try:
        got = slow.recv(100)
        if got == b"" or got.startswith(b"HTTP/1.1 408"):
            cut = time.time() - start
            break
    except socket.timeout:
        pass
print("slow client cut after", -1 if cut is None else round(cut))
c = http.client.HTTPConnection(host, port, timeout=10)
c.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
print("metrics after", c.getresponse().status)
"#;

#[test]
fn http_survives_crowds_and_slow_clients() {
    let dir = TempDir::new("http-hostile");
    let sink = SmtpSink::start("127.0.99.4", &[]);
    let api = start(
        dir.path(),
        "127.0.99.4",
        sink.addr,
        "max_connections = 500\nheader_timeout_s = 5",
    );
    let out = python_ok(
        HOSTILE,
        &[
            api.http.ip().to_string(),
            api.http.port().to_string(),
            "1000".into(),
            ADMIN.into(),
        ],
    );
    let field = |name: &str| -> i64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}: {out}"))
    };
    // The connections past 500 were answered 503 (those the test looked at are all past 500).
    assert_eq!(field("refused"), 50, "{out}");
    // With 500 idle connections held open the server's connection slots are full, so the
    // request on a new connection is refused too; once they close it is answered.
    let crowded = field("metrics while crowded");
    assert!(crowded == 503 || crowded == 200, "{out}");
    let cut = field("slow client cut after");
    assert!((4..=10).contains(&cut), "{out}");
    assert_eq!(field("metrics after"), 200, "{out}");
    assert!(api.metric("vmta_http_connections_refused_total", &[]) >= 500.0);
    // Memory stays bounded.
    let status = std::fs::read_to_string(format!("/proc/{}/status", api._daemon.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kib < 256 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn http_shows_queues_pauses_and_bounces() {
    let dir = TempDir::new("http-queues");
    let sink = SmtpSink::start("127.0.99.5", &[]);
    let api = start(dir.path(), "127.0.99.5", sink.addr, "");
    // Hold two destinations before anything is queued: their mail waits.
    for d in ["alpha.test", "beta.test"] {
        let (code, body) = api.post(Some(ADMIN), &format!("/api/v1/destinations/{d}/pause"), "");
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["changed"], true);
    }
    let (code, body) = api.post(Some(ADMIN), "/api/v1/tenants/demo/pause", "");
    assert_eq!(code, 200);
    assert_eq!(body["paused_tenants"], serde_json::json!(["demo"]));
    let batch = |domain: &str, n: usize, campaign: &str| {
        let v: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                serde_json::json!({"sender": "app@client.test", "recipients": [format!("u{i}@{domain}")],
                    "raw": "From: app@client.test\nSubject: q\n\nbody\n", "tags": {"campaign": campaign}})
            })
            .collect();
        let (code, body) = api.post(
            Some(ADMIN),
            "/api/v1/messages",
            &serde_json::to_string(&v).unwrap(),
        );
        assert_eq!(code, 202, "{body}");
    };
    batch("alpha.test", 6, "spring");
    batch("beta.test", 4, "autumn");
    batch("gamma.test", 3, "spring");
    let demo =
        r#"{"sender":"demo@example.org","recipients":["d@gamma.test"],"subject":"s","text":"t"}"#;
    assert_eq!(api.post(Some(DEMO), "/api/v1/messages", demo).0, 202);
    wait_for("gamma.test delivered", Duration::from_secs(30), || {
        sink.received() >= 3
    });

    let get = |path: &str| {
        let (code, body) = api.curl(Some(ADMIN), &[], path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let q = get("/api/v1/queues");
    assert_eq!(q["total"]["recipients"], 11, "{q}");
    assert_eq!(q["destinations"][0]["domain"], "alpha.test", "{q}");
    assert_eq!(q["destinations"][0]["recipients"], 6);
    assert_eq!(q["destinations"][1]["domain"], "beta.test");
    assert!(q["destinations"][0]["oldest_age_s"].as_u64().is_some());
    assert_eq!(
        q["paused_destinations"],
        serde_json::json!(["alpha.test", "beta.test"])
    );
    let tenants: Vec<&str> = q["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["default", "demo"]);
    assert_eq!(
        get("/api/v1/queues?limit=1")["destinations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let d = get("/api/v1/destinations/alpha.test");
    assert_eq!(d["paused"], true);
    assert_eq!(d["queue"]["recipients"], 6);
    assert!(
        d["slow_because"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("paused")),
        "{d}"
    );
    let g = get("/api/v1/destinations/gamma.test");
    assert_eq!(g["paused"], false);
    assert!(!g["routes"].as_array().unwrap().is_empty(), "{g}");
    assert!(g["routes"][0]["rule_name"].is_string(), "{g}");
    assert!(g["routes"][0]["live"]["connections"].is_u64(), "{g}");

    // Bounce the autumn campaign (beta.test), then release alpha.test and the demo tenant.
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/bounce",
        r#"{"campaign":"autumn","reason":"campaign withdrawn by the sender"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["cancelled"], 4);
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/bounce",
        r#"{"campaign":"autumn","reason":"again"}"#,
    );
    assert_eq!(code, 200);
    assert_eq!(body["cancelled"], 0);
    let (code, body) = api.post(
        Some(ADMIN),
        "/api/v1/bounce",
        r#"{"campaign":"a","tenant":"b","reason":"x"}"#,
    );
    assert_eq!(code, 400, "{body}");
    let (code, _) = api.post(Some(ADMIN), "/api/v1/bounce", r#"{"domain":"x.test"}"#);
    assert_eq!(code, 400);
    assert_eq!(
        api.post(Some(ADMIN), "/api/v1/destinations/alpha.test/resume", "")
            .0,
        200
    );
    assert_eq!(
        api.post(Some(ADMIN), "/api/v1/tenants/demo/resume", "").0,
        200
    );
    wait_for(
        "alpha.test and the demo message delivered",
        Duration::from_secs(30),
        || sink.received() >= 10,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received(), 10);
    assert_eq!(get("/api/v1/queues")["total"]["recipients"], 0);
    // Each cancelled recipient is in the event log once, with the reason.
    let log = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let cancelled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"event\":\"cancelled\""))
        .collect();
    assert_eq!(cancelled.len(), 4, "{log}");
    assert!(
        cancelled
            .iter()
            .all(|l| l.contains("campaign withdrawn by the sender") && l.contains("beta.test"))
    );

    // Operator endpoints need an admin token.
    assert_eq!(api.curl(Some(DEMO), &[], "/api/v1/queues").0, 403);
    assert_eq!(
        api.post(Some(DEMO), "/api/v1/destinations/alpha.test/pause", "")
            .0,
        403
    );
    assert_eq!(
        api.post(
            Some(DEMO),
            "/api/v1/bounce",
            r#"{"tenant":"demo","reason":"x"}"#
        )
        .0,
        403
    );
    assert_eq!(
        api.curl(Some(ADMIN), &[], "/api/v1/destinations/alpha.test/pause")
            .0,
        405
    );
    assert_eq!(api.curl(Some(ADMIN), &[], "/api/v1/destinations/").0, 404);
}

/// Schemathesis drives every operation of docs/openapi.yaml against the running server with
/// generated requests (valid and not) and checks each answer against the document: status codes,
/// content types, headers, response schemas, no 5xx, invalid input refused, no answer without the
/// token. Left out: `positive_data_acceptance` (the API checks what a schema cannot say: address
/// syntax, RFC 5322 content, approved senders, and answers 400 naming the field).
#[test]
fn http_answers_as_its_openapi_document_says() {
    let dir = TempDir::new("http-openapi");
    let sink = SmtpSink::start("127.0.99.6", &[]);
    let api = start(dir.path(), "127.0.99.6", sink.addr, "");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(&doc)
        .args(["--url", &format!("http://{}", api.http)])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "30", "--seed", "7", "--no-color"])
        .args(["--generation-database", "none", "--request-timeout", "30"])
        .current_dir(dir.path())
        .output()
        .expect("python3 runs (.ci/deps installs schemathesis)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis: {text}");
    assert!(text.contains("Tested: 13"), "{text}");
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A spool on a 3 MiB tmpfs fills while nothing delivers: the API answers 503 with Retry-After,
/// every message it answered 202 for is delivered once the smarthost comes up, and the API takes
/// mail again once maintenance has freed the delivered mail's room.
#[test]
fn http_answers_503_on_a_full_spool_and_keeps_what_it_took() {
    let dir = TempDir::new("http-full");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&spool)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root or CAP_SYS_ADMIN");
    let _fs = Tmpfs(spool.clone());
    let sink_addr = free_tcp_addr("127.0.99.7");
    let api = start_with(
        dir.path(),
        "127.0.99.7",
        sink_addr,
        &spool,
        "shards = 1\nspool_segment_mb = 1\n\
         [retry]\npolicy = \"exponential\"\nfirst_s = 1\nmax_s = 1\njitter = 0.0",
        "",
    );
    let body =
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n".repeat(1400);
    let msg = serde_json::json!({"sender": "app@client.test", "recipients": ["x@dest.test"],
        "raw": format!("From: app@client.test\nSubject: fill\n\n{body}")})
    .to_string();
    let mut taken = 0;
    let mut refusal = None;
    for _ in 0..100 {
        let (code, body) = api.curl(
            Some(ADMIN),
            &[
                "-i",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &msg,
            ],
            "/api/v1/messages",
        );
        match code {
            202 => taken += 1,
            _ => {
                refusal = Some((code, body));
                break;
            }
        }
    }
    let (code, body) = refusal.expect("the spool fills within 100 messages of 100 KiB");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("retry-after: "),
        "{body}"
    );
    assert!(body.contains("\"code\":\"spool_full\""), "{body}");
    assert!(taken >= 5, "{taken}");
    // The smarthost comes up: everything taken is delivered, then there is room again.
    let sink = SmtpSink::start_on(sink_addr, &[]);
    wait_for(
        "every message taken delivered",
        Duration::from_secs(120),
        || sink.received() >= taken,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received(), taken);
    // Every delivery was recorded, so maintenance frees the finished segments and the API takes
    // mail again, without a restart.
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..60 {
        last = api.post(Some(ADMIN), "/api/v1/messages", &msg);
        if last.0 != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(last.0, 202, "{}", last.1);
    wait_for("the new message delivered", Duration::from_secs(60), || {
        sink.received() > taken
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received(), taken + 1, "nothing delivered twice");
}

/// The configuration file read again by `POST /api/v1/reload` and by SIGHUP: new shaping rules are
/// applied, a broken file is refused with its reason while mail keeps flowing, and a listener
/// change is named as needing a restart. (`cargo test reload` runs this.)
#[test]
fn http_and_sighup_reload_the_configuration() {
    let dir = TempDir::new("http-reload");
    let sink = SmtpSink::start("127.0.99.8", &[]);
    let api = start(dir.path(), "127.0.99.8", sink.addr, "");
    let path = dir.path().join("vmta.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let reload = || api.post(Some(ADMIN), "/api/v1/reload", "");

    // New shaping rules: applied.
    let shaped = original.replace(
        "[shaping]\nrules = '''\n",
        "[shaping]\nrules = '''\n[[domain]]\ndomains = [\"dest.test\"]\nmax_connections = 2\n",
    );
    assert_ne!(shaped, original);
    std::fs::write(&path, &shaped).unwrap();
    let (code, body) = reload();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["applied"], serde_json::json!(["shaping"]), "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");

    // A broken file: refused with its reason, nothing changes, mail still flows.
    std::fs::write(
        &path,
        shaped.replace("max_connections = 2", "max_connections = \"many\""),
    )
    .unwrap();
    let (code, body) = reload();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shaping"),
        "{body}"
    );
    let msg = r#"{"sender":"app@client.test","recipients":["r@dest.test"],"raw":"From: app@client.test\nSubject: s\n\nb\n"}"#;
    assert_eq!(api.post(Some(ADMIN), "/api/v1/messages", msg).0, 202);
    wait_for("the message delivered", Duration::from_secs(30), || {
        sink.received() >= 1
    });

    // SIGHUP with a listener change: named as needing a restart, logged.
    std::fs::write(
        &path,
        shaped.replace(
            "role = \"relay\"\n",
            "role = \"relay\"\nmax_connections = 7\n",
        ),
    )
    .unwrap();
    let pid = api._daemon.pid() as i32;
    // SAFETY: kill(2) with a live child's pid and a signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let log = dir.path().join("events.jsonl");
    wait_for("the reload logged", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"event\":\"reload\"") && l.contains("\"listener\""))
    });
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"event\":\"reload-refused\"")),
        "{lines}"
    );
    assert_eq!(
        api.curl(Some(DEMO), &["-X", "POST"], "/api/v1/reload").0,
        403
    );
}

/// `vmta reload --config FILE` reaches the running daemon through its control socket: exit 0 with
/// what was applied, 1 with the reason for a broken file, 2 once no daemon runs. (`cargo test
/// reload` runs this.)
#[test]
fn vmta_reload_reaches_the_running_daemon() {
    let dir = TempDir::new("cli-reload");
    let sink = SmtpSink::start("127.0.99.9", &[]);
    let api = start(dir.path(), "127.0.99.9", sink.addr, "");
    let path = dir.path().join("vmta.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let reload = || {
        Command::new(env!("CARGO_BIN_EXE_vmta"))
            .args(["reload", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let shaped = original.replace(
        "[shaping]\nrules = '''\n",
        "[shaping]\nrules = '''\n[[domain]]\ndomains = [\"dest.test\"]\nmax_connections = 2\n",
    );
    std::fs::write(&path, &shaped).unwrap();
    let out = reload();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"applied\":[\"shaping\"]"), "{text}");
    // A new API token and a revoked one: in force for the next request.
    const NEW: &str = "vmta_test-new-token-0123456789abcdef01";
    assert_eq!(api.curl(Some(NEW), &[], "/api/v1/queues").0, 401);
    assert_eq!(api.curl(Some(DEMO), &[], "/api/v1/suppressions").0, 200);
    let rotated = shaped.replace(&hash(DEMO), &hash(NEW));
    std::fs::write(&path, &rotated).unwrap();
    let out = reload();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("\"applied\":[\"api_token\"]") && text.contains("\"needs_restart\":[]"),
        "{text}"
    );
    assert_eq!(api.curl(Some(NEW), &[], "/api/v1/suppressions").0, 200);
    assert_eq!(api.curl(Some(DEMO), &[], "/api/v1/suppressions").0, 401);
    let shaped = rotated;
    std::fs::write(
        &path,
        shaped.replace("max_connections = 2", "max_connections = -1"),
    )
    .unwrap();
    let out = reload();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("reload-refused") && text.contains("shaping"),
        "{text}"
    );
    drop(api);
    std::fs::write(&path, &shaped).unwrap();
    let out = reload();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running vmta serve"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
