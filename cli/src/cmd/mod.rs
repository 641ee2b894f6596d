//! One module per subcommand of `vmta`.

pub mod bench;
pub mod blast;
pub mod bounce;
pub mod dns;
pub mod shaping;

use std::process::ExitCode;

pub mod demo;
pub mod dkim;
pub mod passwd;
pub mod policy;
pub mod preflight;
pub mod queue;
pub mod reload;
pub mod send;
pub mod serve;
pub mod token;
pub mod world;

/// `vmta version`.
pub fn version() -> ExitCode {
    println!("vmta {}", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}
