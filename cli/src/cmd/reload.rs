//! `vmta reload --config FILE`: asks the `vmta serve` running with that configuration (through the
//! control socket beside its spool) to read its configuration file again, and prints the answer:
//! what was applied, what needs a restart, or why the file was refused.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `vmta reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The configuration the daemon runs with (its spool directory locates the control socket).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

/// Exit 0 when the daemon reloaded, 1 when it refused the file, 2 when no daemon answered.
pub fn run(args: ReloadArgs) -> ExitCode {
    let config = match vmta_serve::config::ServeConfig::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmta reload: {e}");
            return ExitCode::from(1);
        }
    };
    let socket = vmta_serve::control::socket_path(&config.engine.engine.spool_dir);
    match vmta_serve::control::send(&socket, "reload") {
        Ok(v) => {
            println!("{v}");
            if v["event"] == "reload" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("vmta reload: {e}");
            ExitCode::from(2)
        }
    }
}
