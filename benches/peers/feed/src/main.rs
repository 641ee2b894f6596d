//! Benchmark feeder: submits vmta's workload (a) to one SMTP relay (the Postfix peer), as fast as the
//! relay takes it.
//!
//! Postfix's own `smtp-source` cannot spread recipients over many domains, so this small client does
//! it: message `i` (0..N) goes to `user{i}@{domain i % D}` with the domains read from the routes file
//! of `vmta world --routes` (only the first column is used: the relay decides where mail goes).
//! `--connections` sessions run in parallel, each on its own thread with `TCP_NODELAY`. Each session
//! sends EHLO, then per message one write holding the previous body and its final dot, followed by
//! the next `MAIL`, `RCPT` and `DATA` (RFC 2920 PIPELINING: DATA ends the group), and reads the four
//! replies: one round trip per message. The body is the workload's 2 KiB text, no line starts with a
//! dot so no dot-stuffing is needed.
//!
//! With `--tls CAFILE` each session says STARTTLS first (RFC 3207; the server's certificate checked
//! against CAFILE for the name `localhost`) and EHLO again; with `--auth USER:PASSWORD` it then logs
//! in with AUTH PLAIN (RFC 4954): what a submission client does.
//!
//! Any reply other than the expected 2xx/354 ends the run with exit code 1 and the reply on stderr.
//! Prints one JSON line: system "feed", messages, seconds, msg_per_s, cpu_s (getrusage of this
//! process), cpu_us_per_msg.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmta_workload::{message, process_cpu_seconds};

const SENDER: &str = "bounces@sender.vmta.test";

fn usage() -> ! {
    eprintln!(
        "usage: smtp-feed --server IP:PORT --routes FILE --messages N [--connections C] [--tls CAFILE] [--auth USER:PASSWORD]"
    );
    std::process::exit(2)
}

/// The connection: plain TCP, or TLS over it after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl std::io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// STARTTLS and AUTH settings.
#[derive(Clone, Default)]
struct Submission {
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: Option<String>,
}

fn tls_config(ca_file: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(ca_file).unwrap_or_else(|e| {
        eprintln!("smtp-feed: cannot read {ca_file}: {e}");
        std::process::exit(2)
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a CA certificate");
    }
    // ring keeps the feeder's build small; the post-quantum key exchange it lacks does not matter
    // on loopback.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Reads one (possibly multi-line) reply and checks its code class.
fn expect(reader: &mut BufReader<Conn>, line: &mut String, want: u8) -> Result<(), String> {
    loop {
        line.clear();
        let n = reader.read_line(line).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        let b = line.as_bytes();
        if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err(format!("bad reply line {line:?}"));
        }
        if b[3] == b'-' {
            continue;
        }
        if b[0] != want {
            return Err(format!("unexpected reply {:?}", line.trim_end()));
        }
        return Ok(());
    }
}

fn envelope(out: &mut Vec<u8>, to: &str) {
    out.extend_from_slice(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes());
}

fn session(
    server: &str,
    domains: &[String],
    total: usize,
    next: &AtomicUsize,
    sub: &Submission,
) -> Result<usize, String> {
    let stream = TcpStream::connect(server).map_err(|e| format!("connect {server}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(16 * 1024, Conn::Plain(stream));
    let mut line = String::new();
    let mut out = Vec::with_capacity(4096);
    expect(&mut reader, &mut line, b'2')?;
    let ehlo = |reader: &mut BufReader<Conn>, line: &mut String| -> Result<(), String> {
        reader
            .get_mut()
            .write_all(b"EHLO feed.sender.vmta.test\r\n")
            .map_err(|e| e.to_string())?;
        expect(reader, line, b'2')
    };
    ehlo(&mut reader, &mut line)?;
    if let Some(config) = &sub.tls {
        reader
            .get_mut()
            .write_all(b"STARTTLS\r\n")
            .map_err(|e| e.to_string())?;
        expect(&mut reader, &mut line, b'2')?;
        let Conn::Plain(tcp) = reader.into_inner() else {
            unreachable!()
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let tls = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        reader = BufReader::with_capacity(
            16 * 1024,
            Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))),
        );
        ehlo(&mut reader, &mut line)?;
    }
    if let Some(credentials) = &sub.auth {
        use base64::Engine as _;
        let (user, pass) = credentials.split_once(':').unwrap_or((credentials, ""));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        reader
            .get_mut()
            .write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        expect(&mut reader, &mut line, b'2')?;
    }

    let take = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        (i < total).then(|| (i, format!("user{i}@{}", domains[i % domains.len()])))
    };
    let mut sent = 0;
    let mut current = take();
    if let Some((_, to)) = &current {
        envelope(&mut out, to);
    }
    while let Some((i, to)) = current {
        // The previous write ended with DATA: MAIL, RCPT and DATA replies are due.
        reader.get_mut().write_all(&out).map_err(|e| e.to_string())?;
        expect(&mut reader, &mut line, b'2')?;
        expect(&mut reader, &mut line, b'2')?;
        expect(&mut reader, &mut line, b'3')?;
        out.clear();
        out.extend_from_slice(&message(i, &to));
        out.extend_from_slice(b"\r\n.\r\n");
        current = take();
        if let Some((_, next_to)) = &current {
            envelope(&mut out, next_to);
        } else {
            out.extend_from_slice(b"QUIT\r\n");
        }
        // The end of data's reply comes before the next group's; the loop reads those.
        reader.get_mut().write_all(&out).map_err(|e| e.to_string())?;
        out.clear();
        expect(&mut reader, &mut line, b'2')?;
        sent += 1;
    }
    Ok(sent)
}

fn main() {
    let (mut server, mut routes, mut messages, mut connections) =
        (String::new(), String::new(), 0usize, 8usize);
    let mut sub = Submission::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--server" => server = value,
            "--routes" => routes = value,
            "--messages" => messages = value.parse().unwrap_or_else(|_| usage()),
            "--connections" => connections = value.parse().unwrap_or_else(|_| usage()),
            "--tls" => sub.tls = Some(tls_config(&value)),
            "--auth" => sub.auth = Some(value),
            _ => usage(),
        }
    }
    if server.is_empty() || routes.is_empty() || messages == 0 || connections == 0 {
        usage()
    }
    let text = std::fs::read_to_string(&routes).unwrap_or_else(|e| {
        eprintln!("smtp-feed: cannot read {routes}: {e}");
        std::process::exit(2)
    });
    let domains: Arc<Vec<String>> = Arc::new(
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
    );
    if domains.is_empty() {
        eprintln!("smtp-feed: no domains in {routes}");
        std::process::exit(2)
    }
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
    let sessions: Vec<_> = (0..connections)
        .map(|_| {
            let (server, domains, next) = (server.clone(), domains.clone(), next.clone());
            let sub = sub.clone();
            std::thread::spawn(move || session(&server, &domains, messages, &next, &sub))
        })
        .collect();
    let mut sent = 0;
    let mut failed = false;
    for s in sessions {
        match s.join() {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => {
                eprintln!("smtp-feed: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    println!(
        "{{\"system\":\"feed\",\"messages\":{sent},\"seconds\":{seconds:.6},\"msg_per_s\":{:.1},\"cpu_s\":{cpu:.6},\"cpu_us_per_msg\":{:.2}}}",
        sent as f64 / seconds.max(1e-9),
        cpu * 1e6 / (sent.max(1) as f64),
    );
    if failed || sent != messages {
        std::process::exit(1);
    }
}
