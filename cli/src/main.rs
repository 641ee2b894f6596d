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
    /// Traffic shaping: the rule and limits that apply to a domain.
    Shaping(cmd::shaping::ShapingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version(),
        Command::Shaping(args) => cmd::shaping::run(args),
    }
}
