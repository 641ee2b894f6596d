//! `vmta preflight`: check what receivers will check about a sender before sending, with vmta's own
//! resolver: SPF, the DKIM key, DMARC, reverse DNS, HELO, DNS blocklists and the MX of the sending
//! domain ([`vmta::preflight`]). Prints `pass`, `warn` or `fail` per check with the reason and the
//! record read.
//!
//! Exit status: 0 when nothing fails (warnings allowed), 1 when a check fails, 2 on bad arguments.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use vmta::dkim::SigningKey;
use vmta::dns::{BlockingResolver, Config, parse_nameserver};
use vmta::preflight::resolver::ResolverLookup;
use vmta::preflight::{PreflightInput, Verdict, run as run_checks};

/// `vmta preflight` arguments.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The sending domain (envelope sender domain and DKIM d=).
    #[arg(long)]
    domain: String,
    /// The sending IP address.
    #[arg(long)]
    ip: IpAddr,
    /// The DKIM selector.
    #[arg(long)]
    selector: String,
    /// The HELO/EHLO name the sender uses.
    #[arg(long)]
    helo: Option<String>,
    /// The From domain for DMARC (default: --domain).
    #[arg(long)]
    from_domain: Option<String>,
    /// The DKIM private key (PEM), to check the published key is its public half.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Nameserver to ask, as IP or IP:PORT (repeatable; default: /etc/resolv.conf).
    #[arg(long = "nameserver", value_name = "HOST:PORT")]
    nameservers: Vec<String>,
    /// DNS blocklist zone for the IP (repeatable; default: zen.spamhaus.org, bl.spamcop.net,
    /// b.barracudacentral.org).
    #[arg(long = "ip-blocklist", value_name = "ZONE")]
    ip_blocklists: Vec<String>,
    /// DNS blocklist zone for the domain (repeatable; default: dbl.spamhaus.org).
    #[arg(long = "domain-blocklist", value_name = "ZONE")]
    domain_blocklists: Vec<String>,
    /// Skip the blocklist checks.
    #[arg(long)]
    no_blocklists: bool,
    /// Seconds to wait for each DNS try.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `vmta preflight`.
pub fn run(args: PreflightArgs) -> ExitCode {
    let mut config = if args.nameservers.is_empty() {
        match Config::from_system() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vmta preflight: cannot read /etc/resolv.conf: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        match args
            .nameservers
            .iter()
            .map(|s| parse_nameserver(s))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(servers) => Config::with_nameservers(servers),
            Err(e) => {
                eprintln!("vmta preflight: {e}");
                return ExitCode::from(2);
            }
        }
    };
    config.timeout = Duration::from_secs(args.timeout.clamp(1, 60));
    let resolver = match BlockingResolver::new(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmta preflight: {e}");
            return ExitCode::from(2);
        }
    };
    let mut input = PreflightInput::new(&args.domain, args.ip, &args.selector);
    input.helo = args.helo.clone();
    input.from_domain = args.from_domain.clone();
    if let Some(path) = &args.key {
        let key = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| SigningKey::from_pem(&pem).map_err(|e| e.to_string()));
        match key {
            Ok(k) => input.public_key = Some((k.algorithm(), k.public_key_bytes())),
            Err(e) => {
                eprintln!("vmta preflight: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if args.no_blocklists {
        input.ip_blocklists.clear();
        input.domain_blocklists.clear();
    } else {
        if !args.ip_blocklists.is_empty() {
            input.ip_blocklists = args.ip_blocklists.clone();
        }
        if !args.domain_blocklists.is_empty() {
            input.domain_blocklists = args.domain_blocklists.clone();
        }
    }
    let dns = ResolverLookup::new(resolver);
    let results = run_checks(&dns, &input);
    if args.json {
        let list: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "check": r.check,
                    "verdict": r.verdict.as_str(),
                    "reason": r.reason,
                    "record": r.record,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        println!(
            "preflight for {} from {} (selector {})",
            input.domain, input.ip, input.selector
        );
        for r in &results {
            println!("{:<10} {:<5} {}", r.check, r.verdict.as_str(), r.reason);
            if let Some(rec) = &r.record {
                println!("{:<10} {:<5} record: {rec}", "", "");
            }
        }
        let fails = results
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .count();
        let warns = results
            .iter()
            .filter(|r| r.verdict == Verdict::Warn)
            .count();
        println!("{} checks: {fails} fail, {warns} warn", results.len());
    }
    if results.iter().any(|r| r.verdict == Verdict::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
