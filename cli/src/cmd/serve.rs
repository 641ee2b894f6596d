//! `vmta serve --config FILE`: the daemon (crate `vmta-serve`) in the foreground.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `vmta serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration: the engine's TOML with `[serve]` and `[[listener]]` tables.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Write this file (atomically) once every listener accepts connections.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Runs until SIGTERM or SIGINT; exit 0 after a clean shutdown, 1 with a one-line reason otherwise.
pub fn run(args: ServeArgs) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("vmta serve: {e}");
        ExitCode::from(1)
    };
    let config = match vmta_serve::config::ServeConfig::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let signals = match vmta_serve::Signals::install() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let listening: Vec<String> = config
        .listeners
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    let ready = || {
        eprintln!("vmta serve: listening on {}", listening.join(", "));
        if let Some(path) = &args.ready_file {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, b"ready\n").is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    };
    match vmta_serve::run(&config, &signals, ready) {
        Ok(()) => {
            eprintln!("vmta serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
