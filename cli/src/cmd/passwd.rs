//! `vmta passwd`: the argon2id hash of a password, for a `[[user]]` of `vmta serve`.

use clap::Args;
use std::io::BufRead;
use std::process::ExitCode;

/// Arguments of `vmta passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Read the password from the first line of standard input (for scripts) instead of asking
    /// twice on the terminal without echo.
    #[arg(long)]
    pub stdin: bool,
}

/// Prints the hash (a PHC string) on standard output.
pub fn run(args: PasswdArgs) -> ExitCode {
    let password = if args.stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("vmta passwd: cannot read standard input: {e}");
            return ExitCode::from(1);
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = match rpassword::prompt_password("Password: ") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("vmta passwd: cannot read the password: {e}");
                return ExitCode::from(1);
            }
        };
        match rpassword::prompt_password("Again: ") {
            Ok(p) if p == first => first,
            Ok(_) => {
                eprintln!("vmta passwd: the passwords differ");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("vmta passwd: cannot read the password: {e}");
                return ExitCode::from(1);
            }
        }
    };
    if password.is_empty() {
        eprintln!("vmta passwd: an empty password is refused");
        return ExitCode::from(1);
    }
    match vmta_serve::users::hash_password(&password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmta passwd: {e}");
            ExitCode::from(1)
        }
    }
}
