//! `vmta token`: a new API token for `vmta serve`'s HTTP API and the SHA-256 its `[[api_token]]`
//! table holds (the configuration never holds the token itself).

use clap::Args;
use std::io::{BufRead, Write as _};
use std::process::ExitCode;

/// Arguments of `vmta token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The `name` of the `[[api_token]]` table printed.
    #[arg(long, default_value = "admin")]
    pub name: String,
    /// The tenant the token acts for (empty: an admin token).
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Hash the token on the first line of standard input instead of making a new one.
    #[arg(long)]
    pub stdin: bool,
}

/// Prints the token on the first line, then the `[[api_token]]` table to paste.
pub fn run(args: TokenArgs) -> ExitCode {
    let token = if args.stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("vmta token: cannot read standard input: {e}");
            return ExitCode::from(1);
        }
        let t = line.trim_end_matches(['\r', '\n']).to_string();
        if t.len() < 16 {
            eprintln!("vmta token: a token shorter than 16 characters is refused");
            return ExitCode::from(1);
        }
        t
    } else {
        vmta_serve::http::new_token()
    };
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    // Written, not printed: `vmta token | head -1` closes the pipe early.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{token}\n[[api_token]]\nname = {}\nsha256 = \"{}\"\ntenant = {}",
        quote(&args.name),
        vmta_serve::http::token_hash(&token),
        quote(&args.tenant)
    );
    ExitCode::SUCCESS
}
