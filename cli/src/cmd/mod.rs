//! One module per subcommand of `vmta`.

pub mod queue;

use std::process::ExitCode;

/// `vmta version`.
pub fn version() -> ExitCode {
    println!("vmta {}", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}
