//! `vmta classify`, `vmta bounce parse` and `vmta suppress`: the bounce module from the command line.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};
use vmta::bounce::report::{self, ReportKind};
use vmta::bounce::suppression::{SuppressionPolicy, SuppressionStore};
use vmta::bounce::{Classifier, Diagnostic, Reason};
use vmta::smtp::Phase;

/// `vmta classify`: reads `CODE [X.Y.Z] TEXT` lines on standard input, prints one JSON object per line.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// A rule file to use instead of the built-in rules.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// The conversation phase of every line (resolve, connect, greeting, ehlo, mail, rcpt, data, ...).
    #[arg(long)]
    phase: Option<String>,
    /// The receiving domain or MX host.
    #[arg(long)]
    receiver: Option<String>,
    /// Add the matching rule's name to the output.
    #[arg(long)]
    explain: bool,
}

/// `vmta bounce ...`.
#[derive(Debug, Subcommand)]
pub enum BounceCommand {
    /// Parse inbound reports (DSN, ARF, auto-reply) and print one JSON object per file.
    Parse {
        /// A rule file to use instead of the built-in rules.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// The messages.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `vmta suppress ...`: the suppression store.
///
/// With `--config`, the change goes through the `vmta serve` running with that configuration (its
/// control socket), or, when none runs, to the log the configuration names. With `--store`, the
/// log is opened directly; a log that a running engine holds is refused with its pid.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["store", "config"])))]
pub struct SuppressArgs {
    /// The suppression log file (created if missing).
    #[arg(long, short = 's')]
    store: Option<PathBuf>,
    /// The `vmta serve` configuration: edit through the running daemon, or its log when none runs.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: SuppressCommand,
}

/// What to do with the store.
#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    /// List the entries (of one tenant).
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Is this address suppressed? Exit status 0 if yes, 1 if not.
    Check {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        stream: Option<String>,
        address: String,
    },
    /// Suppress an address.
    Add {
        #[arg(long)]
        tenant: String,
        /// Only this stream (default: every stream of the tenant).
        #[arg(long)]
        stream: Option<String>,
        /// The reason recorded (default `suppressed`).
        #[arg(long, default_value = "suppressed")]
        reason: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        days: Option<u64>,
        address: String,
    },
    /// Remove a suppression.
    Remove {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        stream: Option<String>,
        address: String,
    },
    /// Rewrite the log with only the live entries.
    Compact,
}

fn load_rules(path: &Option<PathBuf>) -> Result<Classifier, String> {
    match path {
        None => Ok(Classifier::default_rules()),
        Some(p) => {
            let src = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Classifier::from_toml(&src).map_err(|e| format!("{}: {e}", p.display()))
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `vmta classify`.
pub fn classify(args: ClassifyArgs) -> ExitCode {
    let classifier = match load_rules(&args.rules) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmta classify: {e}");
            return ExitCode::FAILURE;
        }
    };
    let phase = match args.phase.as_deref().map(|p| Phase::parse(p).ok_or(p)) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(p)) => {
            eprintln!("vmta classify: unknown phase {p:?}");
            return ExitCode::FAILURE;
        }
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in stdin.lock().split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut d = Diagnostic::from_line(line);
        d.phase = phase;
        if d.phase.is_none() && d.code.is_some() {
            // Most per-recipient replies answer RCPT TO; say --phase otherwise.
            d.phase = Some(Phase::Rcpt);
        } else if d.phase.is_none() {
            // A failure before any reply: a resolver or connection error text.
            d.phase = Some(Phase::Connect);
        }
        if let Some(r) = &args.receiver {
            d.mx_host = r;
            d.recipient_domain = r;
        }
        let c = classifier.classify(&d);
        let mut v = json!({
            "reason": c.reason.as_str(),
            "kind": c.kind.as_str(),
            "action": c.action.as_str(),
            "retry_after_s": c.retry_after_s(),
        });
        if c.throttle {
            v["throttle"] = json!(true);
            v["slow_down"] = json!(f64::from(c.slow_down) / 1000.0);
        }
        if args.explain {
            v["rule"] = json!(c.rule.and_then(|i| classifier.rule_name(i)));
        }
        if writeln!(out, "{v}").is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// `vmta bounce ...`.
pub fn bounce(cmd: BounceCommand) -> ExitCode {
    match cmd {
        BounceCommand::Parse { rules, files } => {
            let classifier = match load_rules(&rules) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("vmta bounce parse: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut failed = false;
            for f in files {
                let name = f.display().to_string();
                let v = match std::fs::read(&f) {
                    Err(e) => {
                        failed = true;
                        json!({"file": name, "error": e.to_string()})
                    }
                    Ok(bytes) => match report::parse(&bytes, &classifier) {
                        Err(e) => {
                            failed = true;
                            json!({"file": name, "error": e.to_string()})
                        }
                        Ok(r) => report_json(&name, &r),
                    },
                };
                println!("{v}");
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn report_json(file: &str, r: &report::Report) -> Value {
    let recipients: Vec<Value> = r
        .recipients
        .iter()
        .map(|x| {
            let reason = match r.kind {
                ReportKind::Arf => Reason::Feedback,
                ReportKind::AutoReply => Reason::Vacation,
                _ => x.reason,
            };
            let mut o = json!({
                "address": x.address,
                "status": x.status.map(|s| s.to_string()),
                "diagnostic": x.diagnostic,
                "reason": reason.as_str(),
                "kind": x.kind.as_str(),
            });
            if let Some(code) = x.reply_code {
                o["reply_code"] = json!(code);
            }
            if let Some(phase) = x.phase {
                o["phase"] = json!(phase.as_str());
            }
            o
        })
        .collect();
    let mut v = json!({"file": file, "type": r.kind.as_str(), "recipients": recipients});
    if r.kind == ReportKind::Arf {
        v["feedback_type"] = json!(r.feedback_type);
    }
    if let Some(id) = &r.original_message_id {
        v["original_message_id"] = json!(id);
    }
    v
}

/// `vmta suppress ...`.
pub fn suppress(args: SuppressArgs) -> ExitCode {
    let path = match (&args.store, &args.config) {
        (Some(p), _) => p.clone(),
        (None, Some(config)) => {
            let config = match vmta_serve::config::ServeConfig::from_file(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("vmta suppress: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let spool = &config.engine.engine.spool_dir;
            let socket = vmta_serve::control::socket_path(spool);
            if let Some(code) = suppress_through_daemon(&socket, &args.command) {
                return code;
            }
            config.engine.suppression.log_path(spool)
        }
        (None, None) => unreachable!("clap requires --store or --config"),
    };
    let mut store = match SuppressionStore::open(&path, SuppressionPolicy::default()) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
            eprintln!(
                "vmta suppress: {e}; give --config with the running vmta serve's configuration \
                 to edit through it"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("vmta suppress: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let rec = store.recovery();
    if rec.corrupt > 0 || rec.truncated > 0 {
        eprintln!(
            "vmta suppress: recovered the log: {} corrupt records skipped, {} bytes of torn tail cut",
            rec.corrupt, rec.truncated
        );
    }
    let now = now();
    let result = match args.command {
        SuppressCommand::List { tenant } => {
            for s in store.list(tenant.as_deref()) {
                println!("{}", s.to_json(now));
            }
            Ok(ExitCode::SUCCESS)
        }
        SuppressCommand::Check {
            tenant,
            stream,
            address,
        } => match store.check(&tenant, &address, stream.as_deref(), now) {
            Some(s) => {
                println!("{}", s.to_json(now));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                println!(
                    "{}",
                    json!({"tenant": tenant, "address": address, "suppressed": false})
                );
                Ok(ExitCode::from(1))
            }
        },
        SuppressCommand::Add {
            tenant,
            stream,
            reason,
            days,
            address,
        } => match Reason::parse(&reason) {
            None => {
                eprintln!("vmta suppress: unknown reason {reason:?}");
                Ok(ExitCode::FAILURE)
            }
            Some(reason) => store
                .add(
                    &tenant,
                    &address,
                    stream.as_deref(),
                    reason,
                    now,
                    days.map(|d| now + d * 86400),
                )
                .map(|s| {
                    println!("{}", s.to_json(now));
                    ExitCode::SUCCESS
                }),
        },
        SuppressCommand::Remove {
            tenant,
            stream,
            address,
        } => store
            .remove(&tenant, &address, stream.as_deref())
            .map(|removed| {
                println!(
                    "{}",
                    json!({"tenant": tenant, "address": address, "removed": removed})
                );
                if removed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }),
        SuppressCommand::Compact => store.compact(now).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("vmta suppress: {e}");
        ExitCode::FAILURE
    })
}

/// Sends the command to the daemon behind `socket`; `None` when no daemon answers there (nothing
/// listens: the caller opens the log itself, and its lock tells whether that is safe).
fn suppress_through_daemon(
    socket: &std::path::Path,
    command: &SuppressCommand,
) -> Option<ExitCode> {
    let request = match command {
        SuppressCommand::List { tenant } => json!({"command": "suppress-list", "tenant": tenant}),
        SuppressCommand::Check {
            tenant,
            stream,
            address,
        } => {
            json!({"command": "suppress-check", "tenant": tenant, "stream": stream, "address": address})
        }
        SuppressCommand::Add {
            tenant,
            stream,
            reason,
            days,
            address,
        } => json!({
            "command": "suppress-add", "tenant": tenant, "stream": stream, "reason": reason,
            "address": address, "expires": days.map(|d| now() + d * 86400),
        }),
        SuppressCommand::Remove {
            tenant,
            stream,
            address,
        } => {
            json!({"command": "suppress-remove", "tenant": tenant, "stream": stream, "address": address})
        }
        SuppressCommand::Compact => json!({"command": "suppress-compact"}),
    };
    let answer = match vmta_serve::control::try_send(socket, &request.to_string())? {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vmta suppress: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    if let Some(e) = answer.get("error") {
        eprintln!("vmta suppress: {}", e.as_str().unwrap_or_default());
        return Some(ExitCode::FAILURE);
    }
    match command {
        SuppressCommand::List { .. } => {
            for s in answer["suppressions"].as_array().into_iter().flatten() {
                println!("{s}");
            }
            Some(ExitCode::SUCCESS)
        }
        SuppressCommand::Check { .. } => {
            println!("{answer}");
            Some(if answer["suppressed"] == false {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        SuppressCommand::Remove { .. } => {
            println!("{answer}");
            Some(if answer["removed"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        SuppressCommand::Add { .. } | SuppressCommand::Compact => {
            println!("{answer}");
            Some(ExitCode::SUCCESS)
        }
    }
}
