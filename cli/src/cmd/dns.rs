//! `vmta dns`: ask vmta's own resolver what the delivery engine would see, for people debugging routing.
//!
//! - `vmta dns mx DOMAIN` prints the delivery targets in the order they would be tried (preference, MX
//!   host, addresses) or the failure with its reason (`hostunknown`, `notaccept`, `networkerror`,
//!   `systemerror`) and whether it is permanent.
//! - `vmta dns ip|txt NAME` and `vmta dns ptr ADDRESS` print address, TXT and PTR records.
//!
//! Nameservers come from `/etc/resolv.conf` unless `--nameserver HOST:PORT` is given (repeatable).
//! The exit status is 0 on success, 1 when the lookup failed, 2 on bad arguments.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use vmta::dns::{
    AddressFamily, Answer, BlockingResolver, Config, Failure, Query, parse_nameserver,
};

/// `vmta dns` arguments.
#[derive(Debug, Args)]
pub struct DnsArgs {
    #[command(subcommand)]
    command: DnsCommand,
    #[command(flatten)]
    options: ResolverOptions,
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Where mail for DOMAIN goes (RFC 5321 §5.1): ordered MX hosts with their addresses.
    Mx {
        /// The mail domain.
        domain: String,
    },
    /// The A and AAAA records of NAME.
    Ip {
        /// The host name.
        name: String,
    },
    /// The TXT records of NAME (SPF, DKIM keys at SELECTOR._domainkey.DOMAIN, DMARC at _dmarc.DOMAIN).
    Txt {
        /// The name.
        name: String,
    },
    /// The PTR records (reverse DNS) of ADDRESS.
    Ptr {
        /// An IPv4 or IPv6 address.
        address: IpAddr,
    },
}

#[derive(Debug, Args)]
struct ResolverOptions {
    /// Nameserver to ask, as IP or IP:PORT (repeatable; default: /etc/resolv.conf).
    #[arg(long = "nameserver", global = true, value_name = "HOST:PORT")]
    nameservers: Vec<String>,
    /// Seconds to wait for each try.
    #[arg(long, global = true)]
    timeout: Option<u64>,
    /// Rounds over the nameservers before giving up.
    #[arg(long, global = true)]
    attempts: Option<u32>,
    /// Which address families to resolve, in which order.
    #[arg(long, global = true, value_enum, default_value_t = Family::Ipv4First)]
    family: Family,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Family {
    Ipv4First,
    Ipv6First,
    Ipv4Only,
    Ipv6Only,
}

/// Runs `vmta dns`.
pub fn run(args: DnsArgs) -> ExitCode {
    let config = match config(&args.options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmta dns: {e}");
            return ExitCode::from(2);
        }
    };
    let mut resolver = match BlockingResolver::new(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmta dns: {e}");
            return ExitCode::from(2);
        }
    };
    let (subject, query) = match &args.command {
        DnsCommand::Mx { domain } => (domain.clone(), Query::Mx(domain.clone())),
        DnsCommand::Ip { name } => (name.clone(), Query::Ip(name.clone())),
        DnsCommand::Txt { name } => (name.clone(), Query::Txt(name.clone())),
        DnsCommand::Ptr { address } => (address.to_string(), Query::Ptr(*address)),
    };
    let answer = match resolver.lookup(query) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmta dns: event loop failed: {e}");
            return ExitCode::from(1);
        }
    };
    if args.options.json {
        println!("{}", to_json(&subject, &answer));
    } else {
        print_text(&subject, &answer);
    }
    if answer.failure().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn config(options: &ResolverOptions) -> Result<Config, String> {
    let mut config = if options.nameservers.is_empty() {
        Config::from_system().map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?
    } else {
        let servers = options
            .nameservers
            .iter()
            .map(|s| parse_nameserver(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Config::with_nameservers(servers)
    };
    if let Some(t) = options.timeout {
        config.timeout = Duration::from_secs(t.clamp(1, 60));
    }
    if let Some(a) = options.attempts {
        config.attempts = a.clamp(1, 10);
    }
    config.family = match options.family {
        Family::Ipv4First => AddressFamily::Ipv4First,
        Family::Ipv6First => AddressFamily::Ipv6First,
        Family::Ipv4Only => AddressFamily::Ipv4Only,
        Family::Ipv6Only => AddressFamily::Ipv6Only,
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn print_failure(subject: &str, f: &Failure) {
    let kind = if f.permanent {
        "permanent"
    } else {
        "temporary"
    };
    println!("{subject}: {kind} failure, reason {}", f.reason);
    println!("  {}", f.detail);
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_text(subject: &str, answer: &Answer) {
    if let Some(f) = answer.failure() {
        print_failure(subject, f);
        return;
    }
    match answer {
        Answer::Mx(Ok(hosts)) => {
            let implicit = hosts.first().is_some_and(|h| h.implicit);
            if implicit {
                println!("{subject}: no MX records, implicit MX (RFC 5321 5.1)");
            } else {
                println!("{subject}: {} delivery target(s) in order", hosts.len());
            }
            println!("  {:>5}  {:<40} addresses", "pref", "host");
            for h in hosts {
                println!(
                    "  {:>5}  {:<40} {}",
                    h.preference,
                    h.name,
                    join(&h.addresses)
                );
            }
        }
        Answer::Ip(Ok(addrs)) => println!("{subject}: {}", join(addrs)),
        Answer::Ptr(Ok(names)) => println!("{subject}: {}", names.join(" ")),
        Answer::Txt(Ok(records)) => {
            println!("{subject}: {} TXT record(s)", records.len());
            for r in records {
                println!("  {}", String::from_utf8_lossy(&r.concatenated()));
            }
        }
        _ => {}
    }
}

fn to_json(subject: &str, answer: &Answer) -> serde_json::Value {
    if let Some(f) = answer.failure() {
        return json!({
            "query": subject,
            "ok": false,
            "reason": f.reason.as_str(),
            "permanent": f.permanent,
            "detail": f.detail,
        });
    }
    let result = match answer {
        Answer::Mx(Ok(hosts)) => json!(
            hosts
                .iter()
                .map(|h| json!({
                    "host": h.name,
                    "preference": h.preference,
                    "addresses": h.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "implicit": h.implicit,
                }))
                .collect::<Vec<_>>()
        ),
        Answer::Ip(Ok(a)) => json!(a.iter().map(ToString::to_string).collect::<Vec<_>>()),
        Answer::Ptr(Ok(n)) => json!(n),
        Answer::Txt(Ok(t)) => json!(
            t.iter()
                .map(|r| String::from_utf8_lossy(&r.concatenated()).into_owned())
                .collect::<Vec<_>>()
        ),
        _ => serde_json::Value::Null,
    };
    json!({ "query": subject, "ok": true, "result": result })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use vmta::dns::{MxHost, Reason};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DnsArgs,
    }

    fn parse(argv: &[&str]) -> DnsArgs {
        Cli::try_parse_from(std::iter::once("vmta-dns").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn options_build_the_config() {
        let args = parse(&[
            "mx",
            "alpha.test",
            "--nameserver",
            "127.0.10.1:5353",
            "--nameserver",
            "[::1]",
            "--timeout",
            "3",
            "--attempts",
            "1",
            "--family",
            "ipv6-first",
        ]);
        let c = config(&args.options).unwrap();
        assert_eq!(
            c.nameservers,
            vec![
                "127.0.10.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.attempts, 1);
        assert_eq!(c.family, AddressFamily::Ipv6First);
        assert!(matches!(args.command, DnsCommand::Mx { ref domain } if domain == "alpha.test"));
        let bad = parse(&["mx", "x.test", "--nameserver", "ns.example"]);
        assert!(config(&bad.options).is_err());
        assert!(Cli::try_parse_from(["vmta-dns", "ptr", "not-an-ip"]).is_err());
    }

    #[test]
    fn json_output() {
        let ok = Answer::Mx(Ok(vec![MxHost {
            name: "mx1.alpha.test".into(),
            preference: 10,
            addresses: vec!["127.0.0.2".parse().unwrap()],
            implicit: false,
        }]));
        assert_eq!(
            to_json("alpha.test", &ok),
            json!({"query": "alpha.test", "ok": true, "result": [
                {"host": "mx1.alpha.test", "preference": 10, "addresses": ["127.0.0.2"], "implicit": false}
            ]})
        );
        let failed = Answer::Mx(Err(Failure {
            reason: Reason::NotAccept,
            permanent: true,
            detail: "null MX".into(),
        }));
        assert_eq!(
            to_json("nullmx.test", &failed),
            json!({"query": "nullmx.test", "ok": false, "reason": "notaccept", "permanent": true, "detail": "null MX"})
        );
    }
}
