//! The `vmta` command: a front end to the delivery core for people operating and debugging it.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

#[derive(Debug, Parser)]
#[command(
    name = "vmta",
    version,
    about = "vmta: an embeddable outbound mail delivery core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the library version.
    Version,
    /// Run the quick start: a campaign delivered to the built-in test world on loopback.
    Demo(cmd::demo::DemoArgs),
    /// Measure the workloads (a)-(f) against the built-in test world, and the blast ceiling.
    Bench(cmd::bench::BenchArgs),
    /// Summarise, list or remove messages of a spool directory.
    Queue {
        /// The spool directory (one shard's).
        dir: std::path::PathBuf,
        /// One line per queued message.
        #[arg(long)]
        list: bool,
        /// Cancel every live recipient of this message (16 hex digits) and free its space.
        #[arg(long, value_name = "ID")]
        remove: Option<String>,
    },
    /// Deliver one message over one SMTP session and print the conversation summary.
    Send(cmd::send::SendArgs),
    /// Resolve like the delivery engine does: MX targets, addresses, TXT, PTR.
    Dns(cmd::dns::DnsArgs),
    /// Sign a message with a DKIM key, or print the key record to publish.
    Dkim(cmd::dkim::DkimArgs),
    /// Check SPF, DKIM, DMARC, reverse DNS, blocklists and MX of a sender, as receivers will.
    Preflight(cmd::preflight::PreflightArgs),
    /// Check a sender policy configuration, or show what vmta would send for a submission.
    Policy(cmd::policy::PolicyArgs),
    /// Traffic shaping: the rule and limits that apply to a domain.
    Shaping(cmd::shaping::ShapingArgs),
    /// Classify SMTP replies read on standard input (`CODE [X.Y.Z] TEXT` per line).
    Classify(cmd::bounce::ClassifyArgs),
    /// Inbound reports: `vmta bounce parse FILE...`.
    #[command(subcommand)]
    Bounce(cmd::bounce::BounceCommand),
    /// List, check, add and remove suppressed addresses.
    Suppress(cmd::bounce::SuppressArgs),
    /// Print the hash of a password for a `[[user]]` of `vmta serve` (asked twice without echo).
    Passwd(cmd::passwd::PasswdArgs),
    /// Make a token for `vmta serve`'s HTTP API: prints it and the `[[api_token]]` table with its hash.
    Token(cmd::token::TokenArgs),
    /// Relay mail from existing mailers over SMTP: listeners in front of the engine, until SIGTERM.
    Serve(cmd::serve::ServeArgs),
    /// Ask the running `vmta serve` to read its configuration file again (as SIGHUP).
    Reload(cmd::reload::ReloadArgs),
    /// Run the built-in test world in the foreground, for measuring other clients against it.
    World(cmd::world::WorldArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version(),
        Command::Send(args) => cmd::send::run(args),
        Command::Queue { dir, list, remove } => cmd::queue::run(&dir, list, remove.as_deref()),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Dns(args) => cmd::dns::run(args),
        Command::Dkim(args) => cmd::dkim::run(args),
        Command::Preflight(args) => cmd::preflight::run(args),
        Command::Policy(args) => cmd::policy::run(args),
        Command::Shaping(args) => cmd::shaping::run(args),
        Command::Classify(a) => cmd::bounce::classify(a),
        Command::Bounce(c) => cmd::bounce::bounce(c),
        Command::Suppress(a) => cmd::bounce::suppress(a),
        Command::World(a) => cmd::world::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Reload(a) => cmd::reload::run(a),
        Command::Passwd(a) => cmd::passwd::run(a),
        Command::Token(a) => cmd::token::run(a),
    }
}
