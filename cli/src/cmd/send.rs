//! `vmta send`: delivers one message over one SMTP session and prints what happened, the tool a mail
//! engineer reaches for to test a server, built on vmta's own session.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vmta::client::run_connection;
use vmta::smtp::{
    Envelope, Event, MessageFailure, Recipient, SessionConfig, Tls, TlsSettings, Transaction,
};

/// Arguments of `vmta send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The server, HOST:PORT.
    #[arg(long)]
    server: String,
    /// The envelope sender (empty for the null sender).
    #[arg(long)]
    from: String,
    /// A recipient; repeat for several.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    /// STARTTLS policy.
    #[arg(long, value_enum, default_value = "opportunistic")]
    tls: TlsArg,
    /// Extra CA certificates (PEM) to trust with --tls required.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The name to send with EHLO.
    #[arg(long, default_value = "localhost")]
    helo: String,
    /// The name to check the certificate against (default: the HOST of --server).
    #[arg(long)]
    server_name: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The message file (headers and body); `-` for standard input.
    file: String,
}

/// TLS policy on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TlsArg {
    /// Never use STARTTLS.
    Disabled,
    /// Use STARTTLS when offered, without checking the certificate.
    Opportunistic,
    /// Require STARTTLS with a verified certificate.
    Required,
}

/// Runs `vmta send`.
pub fn run(args: SendArgs) -> ExitCode {
    match send(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vmta send: {e}");
            ExitCode::from(2)
        }
    }
}

fn send(args: &SendArgs) -> Result<bool, String> {
    let body = if args.file == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map_err(|e| e.to_string())?;
        v
    } else {
        std::fs::read(&args.file).map_err(|e| format!("{}: {e}", args.file))?
    };
    let addr: SocketAddr = args
        .server
        .to_socket_addrs()
        .map_err(|e| format!("--server {}: {e}", args.server))?
        .next()
        .ok_or_else(|| format!("--server {}: no address", args.server))?;
    let host = args
        .server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&args.server);
    let server_name = args.server_name.clone().unwrap_or_else(|| host.to_string());
    let mut config = SessionConfig::new(&args.helo);
    let ca = match &args.ca {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    config.tls = match args.tls {
        TlsArg::Disabled => Tls::Disabled,
        TlsArg::Opportunistic => Tls::Opportunistic(
            TlsSettings::new(None)
                .map_err(|e| e.to_string())?
                .opportunistic(),
        ),
        TlsArg::Required => Tls::Required(
            TlsSettings::new(ca.as_deref())
                .map_err(|e| e.to_string())?
                .verified(),
        ),
    };
    let eight_bit = body.iter().any(|b| *b >= 0x80);
    let envelope = Envelope {
        mail_from: args.from.clone(),
        recipients: args.to.iter().map(Recipient::new).collect(),
        eight_bit,
        ..Envelope::default()
    };
    let tx = Transaction {
        envelope,
        body: Arc::new(body),
        crlf_clean: false,
    };
    let report = run_connection(
        addr,
        &server_name,
        Arc::new(config),
        vec![tx],
        Duration::from_secs(args.timeout),
    )
    .map_err(|e| format!("{addr}: {e}"))?;

    println!("server: {addr} ({server_name})");
    let c = &report.capabilities;
    let mut caps = Vec::new();
    for (on, name) in [
        (c.esmtp, "ESMTP"),
        (c.pipelining, "PIPELINING"),
        (c.chunking, "CHUNKING"),
        (c.eight_bit_mime, "8BITMIME"),
        (c.smtputf8, "SMTPUTF8"),
        (c.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
        (c.dsn, "DSN"),
        (c.starttls, "STARTTLS"),
    ] {
        if on {
            caps.push(name.to_string());
        }
    }
    if let Some(size) = c.size {
        caps.push(format!("SIZE {size}"));
    }
    println!("capabilities: {}", caps.join(" "));
    let mut results: Vec<Option<String>> = vec![None; args.to.len()];
    let mut accepted_at_rcpt = vec![false; args.to.len()];
    let mut all_ok = true;
    for e in &report.events {
        match e {
            Event::Ready => println!("session: ready"),
            Event::TlsEstablished { version, cipher } => println!("tls: {version} {cipher}"),
            Event::RcptAccepted { index, reply } => {
                accepted_at_rcpt[*index] = true;
                println!("rcpt {}: {reply}", args.to[*index]);
            }
            Event::RcptRejected { index, reply } => {
                println!("rcpt {}: {reply}", args.to[*index]);
                results[*index] = Some(format!("rejected {reply}"));
            }
            Event::MessageAccepted { reply } => {
                println!("message: accepted {reply}");
                for (i, ok) in accepted_at_rcpt.iter().enumerate() {
                    if *ok {
                        results[i] = Some(format!("accepted {reply}"));
                    }
                }
            }
            Event::MessageFailed { phase, failure } => {
                println!("message: failed in {phase}: {failure}");
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(format!("failed in {phase}: {}", describe(failure)));
                }
            }
            Event::Closed(cause) => println!("session: closed ({cause})"),
        }
    }
    for (i, rcpt) in args.to.iter().enumerate() {
        let result = results[i]
            .clone()
            .unwrap_or_else(|| "failed: no outcome (session ended early)".to_string());
        if !result.starts_with("accepted") {
            all_ok = false;
        }
        println!("{rcpt}: {result}");
    }
    Ok(all_ok)
}

fn describe(f: &MessageFailure) -> String {
    f.to_string()
}
