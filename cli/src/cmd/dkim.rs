//! `vmta dkim`: sign a message with a DKIM key, or print the key record to publish, so people can test
//! their keys and the receivers that check them.
//!
//! - `vmta dkim sign --key FILE --domain D --selector S [--algorithm rsa-sha256|ed25519-sha256] FILE`
//!   prints the message with a DKIM-Signature field on top (line endings made CRLF first, as vmta
//!   sends them). `-` reads standard input.
//! - `vmta dkim record --key FILE` prints the TXT record to publish at `S._domainkey.D`.
//!
//! Exit status: 0 on success, 1 when the message cannot be signed, 2 on bad arguments or keys.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use vmta::dkim::{Algorithm, Canonicalization, Signer, SignerConfig, SigningKey};

/// `vmta dkim` arguments.
#[derive(Debug, Args)]
pub struct DkimArgs {
    #[command(subcommand)]
    command: DkimCommand,
}

#[derive(Debug, Subcommand)]
enum DkimCommand {
    /// Sign a message and print it with its DKIM-Signature field.
    Sign {
        /// The private key (PEM: PKCS#1 or PKCS#8 RSA of 2048 bits or more, PKCS#8 Ed25519).
        #[arg(long)]
        key: PathBuf,
        /// The signing domain (d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=).
        #[arg(long)]
        selector: String,
        /// The algorithm; checked against the key (default: the key's own).
        #[arg(long, value_parser = ["rsa-sha256", "ed25519-sha256"])]
        algorithm: Option<String>,
        /// Canonicalization, header/body.
        #[arg(long, default_value = "relaxed/relaxed", value_parser = ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"])]
        canonicalization: String,
        /// Oversign From, Subject, Date, To, Cc, Reply-To and the List-Unsubscribe fields.
        #[arg(long)]
        oversign: bool,
        /// The signature timestamp t= (default: now).
        #[arg(long)]
        timestamp: Option<u64>,
        /// The message file (`-` for standard input).
        file: PathBuf,
    },
    /// Print the DNS TXT record that publishes the key's public half.
    Record {
        /// The private key (PEM).
        #[arg(long)]
        key: PathBuf,
    },
}

fn load_key(path: &PathBuf) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    SigningKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes every line ending CRLF (bare CR and bare LF included).
fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Runs `vmta dkim`.
pub fn run(args: DkimArgs) -> ExitCode {
    match args.command {
        DkimCommand::Record { key } => match load_key(&key) {
            Ok(k) => {
                println!("{}", k.public_key_record());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmta dkim: {e}");
                ExitCode::from(2)
            }
        },
        DkimCommand::Sign {
            key,
            domain,
            selector,
            algorithm,
            canonicalization,
            oversign,
            timestamp,
            file,
        } => {
            let key = match load_key(&key) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("vmta dkim: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(a) = algorithm.as_deref().and_then(Algorithm::parse)
                && let Err(e) = key.expect_algorithm(a)
            {
                eprintln!("vmta dkim: {e}");
                return ExitCode::from(2);
            }
            let (h, b) = canonicalization
                .split_once('/')
                .and_then(|(h, b)| Some((Canonicalization::parse(h)?, Canonicalization::parse(b)?)))
                .unwrap_or((Canonicalization::Relaxed, Canonicalization::Relaxed));
            let mut config = SignerConfig::new(&domain, &selector).with_canonicalization(h, b);
            if oversign {
                config = config.with_oversigning();
            }
            let signer = match Signer::new(key, config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("vmta dkim: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut raw = Vec::new();
            let read = if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut raw).map(|_| ())
            } else {
                std::fs::read(&file).map(|b| raw = b)
            };
            if let Err(e) = read {
                eprintln!("vmta dkim: {}: {e}", file.display());
                return ExitCode::from(2);
            }
            let now = timestamp.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            match signer.sign_message(&crlf(&raw), now) {
                Ok(signed) => {
                    let mut out = std::io::stdout().lock();
                    if out.write_all(&signed).and_then(|_| out.flush()).is_err() {
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vmta dkim: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
