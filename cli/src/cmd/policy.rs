//! `vmta policy`: check a sender policy configuration, and show what vmta would send for a
//! submission.
//!
//! - `vmta policy check CONFIG` loads the `[[tenant]]` tables (keys, templates, sender lists) and
//!   prints each tenant with its pool, senders and DKIM keys (with the record each must publish).
//! - `vmta policy submit --config CONFIG --tenant T --sender S [--recipient R] [--campaign C] FILE`
//!   runs the submission path: validation (with a Received field), tenant admission, the
//!   List-Unsubscribe and Feedback-ID fields for the recipient, and DKIM signing with every key of
//!   the From domain; prints the message as it would be sent, or the refusal.
//!
//! Exit status: 0 on success, 1 when the submission is refused, 2 on a bad configuration or arguments.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use vmta::policy::{self, PolicyConfig, Stamp, TenantRegistry, Trace, ValidationOptions};

/// `vmta policy` arguments.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Load a configuration and print its tenants.
    Check {
        /// The TOML file with `[[tenant]]` tables (key files are relative to it).
        config: PathBuf,
    },
    /// Show what vmta would send for a submission, or why it refuses it.
    Submit {
        /// The TOML file with `[[tenant]]` tables.
        #[arg(long)]
        config: PathBuf,
        /// The tenant submitting.
        #[arg(long)]
        tenant: String,
        /// The envelope sender (MAIL FROM).
        #[arg(long)]
        sender: String,
        /// The recipient, for the per-recipient fields.
        #[arg(long, default_value = "recipient@example.net")]
        recipient: String,
        /// Campaign id for Feedback-ID.
        #[arg(long)]
        campaign: Option<String>,
        /// The message file.
        file: PathBuf,
    },
}

fn load(config: &PathBuf) -> Result<TenantRegistry, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let parsed =
        PolicyConfig::from_toml(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let base = config
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    TenantRegistry::from_config(&parsed, &base).map_err(|e| format!("{}: {e}", config.display()))
}

/// Runs `vmta policy`.
pub fn run(args: PolicyArgs) -> ExitCode {
    match args.command {
        PolicyCommand::Check { config } => {
            let registry = match load(&config) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vmta policy: {e}");
                    return ExitCode::from(2);
                }
            };
            for name in registry.names() {
                let Some(t) = registry.get(&name) else {
                    continue;
                };
                let state = if registry.is_locked(&name) {
                    "locked"
                } else {
                    "active"
                };
                println!("tenant {name} ({state}), pool {}", t.pool());
                for s in t.signers() {
                    let c = s.config();
                    println!(
                        "  dkim {} {}._domainkey.{} ({} bits): {}",
                        s.key().algorithm(),
                        c.selector,
                        c.domain,
                        s.key().bits(),
                        s.key().public_key_record()
                    );
                }
                if let Some(u) = t.unsubscribe() {
                    println!(
                        "  unsubscribe: {}{}",
                        [u.url.as_deref(), u.mailto.as_deref()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(", "),
                        if u.one_click { " (one-click)" } else { "" }
                    );
                }
            }
            ExitCode::SUCCESS
        }
        PolicyCommand::Submit {
            config,
            tenant,
            sender,
            recipient,
            campaign,
            file,
        } => {
            let registry = match load(&config) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vmta policy: {e}");
                    return ExitCode::from(2);
                }
            };
            let raw = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("vmta policy: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let id = format!("cli{now}");
            let stamp = Stamp {
                now,
                unique_id: &id,
                trace: Some(Trace {
                    from_host: "localhost",
                    from_ip: None,
                    by_host: "vmta",
                    with: "ESMTPA",
                    id: &id,
                    tls: None,
                    auth: None,
                }),
            };
            let admitted = match policy::submit(
                &registry,
                &tenant,
                &sender,
                &raw,
                &ValidationOptions::default(),
                &stamp,
            ) {
                Ok(a) => a,
                Err(e) => {
                    println!("refused ({}): {e}", e.kind());
                    return ExitCode::from(1);
                }
            };
            let t = &admitted.tenant;
            let mut fields = Vec::new();
            if let Some(u) = t.unsubscribe_fields(&recipient, &admitted.message.message_id) {
                u.write(&mut fields);
            }
            match t.feedback_id(campaign.as_deref(), None) {
                Some(Ok(f)) => fields.extend_from_slice(f.as_bytes()),
                Some(Err(e)) => {
                    eprintln!("vmta policy: {e}");
                    return ExitCode::from(2);
                }
                None => {}
            }
            let mut message = policy::with_fields(&admitted.message, &fields);
            let from_domain = admitted
                .message
                .from
                .first()
                .and_then(|a| policy::address::domain_of(a))
                .unwrap_or_default();
            for s in t.signers_for(&from_domain) {
                match s.sign_message(&message, now) {
                    Ok(m) => message = m,
                    Err(e) => {
                        eprintln!("vmta policy: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            let mut out = std::io::stdout().lock();
            if out.write_all(&message).and_then(|_| out.flush()).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
    }
}
