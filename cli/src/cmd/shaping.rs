//! `vmta shaping show DOMAIN`: the shaping rule that applies to a recipient domain, with its limits.
//!
//! Without a running engine the command shows the configured state: the rule (and where it comes from:
//! default, provider, domain or mx), its limits as written and as scaled by the source's throughput
//! level, and the source's warm-up day. The live part of [`vmta::shaping::Snapshot`] (tokens, open
//! connections, backoff) is printed by the engine, which owns that state.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmta::shaping::{RuleSet, Snapshot, ThroughputLevel};

/// `vmta shaping ...`.
#[derive(Debug, Args)]
pub struct ShapingArgs {
    #[command(subcommand)]
    command: ShapingCommand,
}

#[derive(Debug, Subcommand)]
enum ShapingCommand {
    /// Print the rule that applies to DOMAIN and its limits.
    Show {
        /// The recipient domain.
        domain: String,
        /// The MX host mail for DOMAIN goes to (selects MX rules and provider MX suffixes).
        #[arg(long)]
        mx: Option<String>,
        /// The sending source (IP address or sending domain) whose level and warm-up to apply.
        #[arg(long)]
        source: Option<String>,
        /// Preview the limits at this throughput level (new, low, moderate, medium, high, full) instead of
        /// the source's configured one.
        #[arg(long)]
        level: Option<String>,
        /// A rules file (TOML); default: the shipped rules for the large providers.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the shipped default rules (a starting point for your own file).
    Defaults,
}

/// Runs `vmta shaping`.
pub fn run(args: ShapingArgs) -> ExitCode {
    match args.command {
        ShapingCommand::Show {
            domain,
            mx,
            source,
            level,
            rules,
            json,
        } => {
            let level = match level.as_deref().map(ThroughputLevel::parse) {
                None => None,
                Some(Some(l)) => Some(l),
                Some(None) => {
                    eprintln!(
                        "vmta shaping: --level must be one of new, low, moderate, medium, high, full"
                    );
                    return ExitCode::from(2);
                }
            };
            let set = match &rules {
                None => RuleSet::shipped(),
                Some(path) => {
                    let text = match std::fs::read_to_string(path) {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("vmta shaping: cannot read {}: {e}", path.display());
                            return ExitCode::from(2);
                        }
                    };
                    match RuleSet::from_toml(&text) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("vmta shaping: {}: {e}", path.display());
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut snap =
                Snapshot::configured(&set, &domain, mx.as_deref(), source.as_deref(), unix_now);
            if let Some(l) = level {
                snap = snap.at_level(l);
            }
            if json {
                match serde_json::to_string_pretty(&snap) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("vmta shaping: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                let from = rules
                    .as_ref()
                    .map_or("shipped default rules".to_string(), |p| {
                        p.display().to_string()
                    });
                println!("rules:         {from}");
                print!("{snap}");
            }
            ExitCode::SUCCESS
        }
        ShapingCommand::Defaults => {
            print!("{}", vmta::shaping::rules::DEFAULT_RULES);
            ExitCode::SUCCESS
        }
    }
}
