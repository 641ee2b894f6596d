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
    /// Classify SMTP replies read on standard input (`CODE [X.Y.Z] TEXT` per line).
    Classify(cmd::bounce::ClassifyArgs),
    /// Inbound reports: `vmta bounce parse FILE...`.
    #[command(subcommand)]
    Bounce(cmd::bounce::BounceCommand),
    /// List, check, add and remove suppressed addresses.
    Suppress(cmd::bounce::SuppressArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version(),
        Command::Classify(a) => cmd::bounce::classify(a),
        Command::Bounce(c) => cmd::bounce::bounce(c),
        Command::Suppress(a) => cmd::bounce::suppress(a),
    }
}
