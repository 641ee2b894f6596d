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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version(),
        Command::Queue { dir, list, remove } => cmd::queue::run(&dir, list, remove.as_deref()),
    }
}
