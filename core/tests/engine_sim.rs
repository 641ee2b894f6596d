//! Deterministic simulation of the engine: the real shard core against simulated MX hosts on a
//! virtual clock, over simulated days.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use vmta::engine::EventKind;
use vmta::engine::config::EngineConfig;
use vmta::engine::retry::ExponentialRetry;
use vmta::engine::sim::{HostBehaviour, Outcome, SimDomain, Simulation, World};

const HOUR: Duration = Duration::from_secs(3600);

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmta-sim-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(cap: usize) -> EngineConfig {
    EngineConfig::builder()
        .shards(1)
        .max_connections_per_host(cap)
        .max_messages_per_connection(50)
        .build()
}

/// A mixed world: healthy, slow, flaky, greylisting, hard-bouncing and dead hosts.
fn mixed_world() -> World {
    let ms = Duration::from_millis;
    let hosts = vec![
        HostBehaviour::default(),
        HostBehaviour {
            latency: ms(40),
            ..Default::default()
        },
        HostBehaviour {
            rcpt_4xx: 0.2,
            drop: 0.05,
            ..Default::default()
        },
        HostBehaviour {
            greylist: true,
            ..Default::default()
        },
        HostBehaviour {
            rcpt_5xx: 0.3,
            ..Default::default()
        },
        HostBehaviour {
            down: true,
            ..Default::default()
        },
        HostBehaviour {
            latency: ms(20),
            rcpt_4xx: 0.05,
            rcpt_5xx: 0.05,
            drop: 0.02,
            ..Default::default()
        },
    ];
    let mut domains = Vec::new();
    for i in 0..40 {
        // Most domains have a primary and a backup MX.
        let primary = i % hosts.len();
        let backup = (i + 1) % hosts.len();
        domains.push(SimDomain {
            name: format!("d{i}.sim.test"),
            mx: if primary == 5 {
                vec![5]
            } else {
                vec![primary, backup]
            },
        });
    }
    domains.push(SimDomain {
        name: "nxdomain.sim.test".into(),
        mx: vec![],
    });
    World {
        hosts,
        domains,
        dns_latency: ms(2),
    }
}

fn run_mixed(seed: u64, messages: usize) -> Outcome {
    run_mixed_with(seed, messages, config(3))
}

fn run_mixed_with(seed: u64, messages: usize, config: EngineConfig) -> Outcome {
    let dir = Dir::new("mixed");
    let retry = Arc::new(ExponentialRetry::default());
    let mut sim = Simulation::new(mixed_world(), &config, retry, &dir.0, seed);
    for m in 0..messages {
        let at = Duration::from_millis((m as u64 * 3_600_000) / messages as u64);
        let d = if m % 97 == 0 {
            "nxdomain".to_string()
        } else {
            format!("d{}", m % 40)
        };
        let rcpts = (0..(1 + m % 3))
            .map(|r| format!("u{m}-{r}@{d}.sim.test"))
            .collect();
        sim.submit_at(at, rcpts);
    }
    sim.run(80 * HOUR)
}

#[test]
fn every_recipient_reaches_exactly_one_final_state_over_three_days() {
    let messages = 1500;
    let out = run_mixed(42, messages);
    // By default a connection's window grows from one transaction to eight.
    assert!(
        (1..=8).contains(&out.max_transactions_per_read),
        "{} transactions in one read",
        out.max_transactions_per_read
    );
    exactly_once(messages, out);
}

#[test]
fn with_transactions_in_flight_every_recipient_still_ends_exactly_once() {
    // Four messages behind each other per connection, through flaky hosts that drop connections
    // with transactions in flight, greylisting, hard bounces, dead hosts and three days of retries.
    let messages = 1500;
    let config = EngineConfig::builder()
        .shards(1)
        .max_connections_per_host(3)
        .max_messages_per_connection(50)
        .transactions_in_flight(4)
        .build();
    let out = run_mixed_with(42, messages, config);
    assert!(
        (2..=4).contains(&out.max_transactions_per_read),
        "{} transactions in one read",
        out.max_transactions_per_read
    );
    exactly_once(messages, out);
}

#[test]
fn with_a_tiny_active_limit_every_recipient_still_ends_exactly_once() {
    // Ten recipients in memory at a time: nearly everything waits in the spool and is admitted as
    // the queues drain, through greylisting, flaky and dead hosts and three days of retries.
    let messages = 1500;
    let config = EngineConfig::builder()
        .shards(1)
        .max_connections_per_host(3)
        .max_messages_per_connection(50)
        .active_recipients(10)
        .build();
    exactly_once(messages, run_mixed_with(42, messages, config));
}

#[test]
fn the_active_limit_bounds_the_ready_queues_of_a_burst() {
    let world = World {
        hosts: vec![HostBehaviour::default(); 4],
        domains: (0..20)
            .map(|i| SimDomain {
                name: format!("d{i}.sim.test"),
                mx: vec![i % 4],
            })
            .collect(),
        dns_latency: Duration::from_millis(2),
    };
    let run = |limit: usize| {
        let dir = Dir::new("burst");
        let config = EngineConfig::builder()
            .shards(1)
            .max_connections_per_host(2)
            .max_messages_per_connection(1000)
            .active_recipients(limit)
            .build();
        let retry = Arc::new(ExponentialRetry::default());
        let mut sim = Simulation::new(world.clone(), &config, retry, &dir.0, 5);
        for m in 0..3000usize {
            let rcpts = (0..(1 + m % 3))
                .map(|r| format!("u{m}-{r}@d{}.sim.test", (m + r) % 20))
                .collect();
            sim.submit_at(Duration::from_micros(m as u64), rcpts);
        }
        sim.run(HOUR)
    };
    let bounded = run(50);
    let unbounded = run(1_000_000);
    for out in [&bounded, &unbounded] {
        assert_eq!(out.count(EventKind::Delivered), 6000);
        assert!(out.accepted.values().all(|n| *n == 1));
    }
    // A message is admitted while the queues hold fewer than the limit: at most two recipients over.
    assert!(bounded.peak_ready <= 52, "peak {}", bounded.peak_ready);
    assert!(unbounded.peak_ready > 1000, "peak {}", unbounded.peak_ready);
}

fn exactly_once(messages: usize, out: Outcome) {
    let recipients: usize = (0..messages).map(|m| 1 + m % 3).sum();
    let mut finals: HashMap<&str, EventKind> = HashMap::new();
    for e in &out.events {
        if matches!(
            e.kind,
            EventKind::Delivered | EventKind::Bounced | EventKind::Expired
        ) {
            assert!(
                finals.insert(e.recipient.as_str(), e.kind).is_none(),
                "{} reached a final state twice",
                e.recipient
            );
        }
    }
    assert_eq!(finals.len(), recipients, "every recipient ends");
    // Finished messages are forgotten: memory follows the queue, not the history.
    assert_eq!(out.cancellable, 0);
    // Delivered means the server accepted it, exactly once.
    let delivered = out.count(EventKind::Delivered);
    assert_eq!(delivered, out.accepted.len());
    assert!(out.accepted.values().all(|n| *n == 1));
    // Domains whose only MX is dead expire after the 72-hour maximum age, not before (the last attempt
    // may wait for the shaping layer's destination backoff, at most an hour).
    for e in out.events.iter().filter(|e| e.kind == EventKind::Expired) {
        let age = e.at_ms / 1000 - e.submitted_at;
        assert!(
            (72 * 3600..73 * 3600 + 60).contains(&age),
            "expired after {age} s: {e:?}"
        );
        assert!(e.attempts > 5, "{e:?}");
    }
    assert!(out.count(EventKind::Expired) > 0);
    // Only a 5xx or NXDOMAIN bounces, never a 4xx; NXDOMAIN at the first attempt.
    for e in out.events.iter().filter(|e| e.kind == EventKind::Bounced) {
        assert!(e.code == 550 || e.text.contains("hostunknown"), "{e:?}");
        if e.text.contains("hostunknown") {
            assert_eq!(e.attempts, 1, "{e:?}");
        }
    }
    assert!(out.count(EventKind::Bounced) > 0);
    // The greylisting host delivers on the second attempt, about 15 minutes later.
    let grey: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Delivered && e.mx == "mx3.sim.test")
        .collect();
    assert!(!grey.is_empty());
    assert!(grey.iter().all(|e| e.attempts >= 2));
    // The per-host connection cap held on the receiving side.
    assert!(
        out.peak_connections.iter().all(|p| *p <= 3),
        "{:?}",
        out.peak_connections
    );
    assert_eq!(out.peak_connections[5], 0, "the dead host never answered");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run_mixed(7, 300);
    let b = run_mixed(7, 300);
    let c = run_mixed(8, 300);
    assert_eq!(a.events.len(), b.events.len());
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn retries_follow_the_exponential_schedule_until_expiry() {
    let dir = Dir::new("schedule");
    let world = World {
        hosts: vec![HostBehaviour {
            rcpt_4xx: 1.0,
            ..Default::default()
        }],
        domains: vec![SimDomain {
            name: "slow.sim.test".into(),
            mx: vec![0],
        }],
        dns_latency: Duration::from_millis(1),
    };
    let policy = ExponentialRetry::default();
    let mut sim = Simulation::new(world, &config(2), Arc::new(policy), &dir.0, 1);
    sim.submit_at(Duration::ZERO, vec!["u@slow.sim.test".into()]);
    let out = sim.run(100 * HOUR);
    let attempts: Vec<_> = out.events.iter().collect();
    let last = attempts.last().unwrap();
    assert_eq!(last.kind, EventKind::Expired);
    let deferred: Vec<_> = attempts
        .iter()
        .filter(|e| e.kind == EventKind::Deferred)
        .collect();
    for (i, e) in deferred.iter().enumerate() {
        assert_eq!(e.attempts as usize, i + 1);
        if e.next_attempt == e.submitted_at + 72 * 3600 {
            // The last attempt is pulled in to the maximum age.
            continue;
        }
        let delay = e.next_attempt - e.at_ms / 1000;
        let base = policy.base_delay(e.attempts) as f64;
        assert!(
            (delay as f64) >= base * 0.79 && (delay as f64) <= base * 1.21,
            "attempt {}: delay {delay} s, base {base} s",
            e.attempts
        );
        if i + 1 < deferred.len() {
            // The next attempt happened when it was scheduled.
            let next_at = deferred[i + 1].at_ms / 1000;
            assert!(
                next_at >= e.next_attempt && next_at <= e.next_attempt + 2,
                "{next_at} vs {}",
                e.next_attempt
            );
        }
    }
    // 15 min, 30, 1 h, 2 h, then every 4 h up to 72 h: about 20 attempts.
    assert!(
        (15..=25).contains(&deferred.len()),
        "{} deferrals",
        deferred.len()
    );
    let age = last.at_ms / 1000 - last.submitted_at;
    assert!(
        (72 * 3600..72 * 3600 + 60).contains(&age),
        "expired at {age} s"
    );
}

#[test]
fn shaping_limits_hold_at_the_receiver_and_messages_wait_instead_of_bouncing() {
    let dir = Dir::new("shaping");
    let world = World {
        hosts: vec![HostBehaviour::default()],
        domains: (0..5)
            .map(|i| SimDomain {
                name: format!("s{i}.sim.test"),
                mx: vec![0],
            })
            .collect(),
        dns_latency: Duration::from_millis(1),
    };
    // Two connections at most, 60 messages a minute, 20 per connection.
    let rules = "[defaults]\nmax_connections = 2\nconnection_rate = \"unlimited\"\nmax_messages_per_connection = 20\nmessage_rate = \"60/min\"\nmessage_burst = 1\n";
    let mut cfg = config(10);
    cfg.shaping.rules = rules.into();
    let mut sim = Simulation::new(
        world,
        &cfg,
        Arc::new(ExponentialRetry::default()),
        &dir.0,
        3,
    );
    for m in 0..300 {
        sim.submit_at(Duration::ZERO, vec![format!("u{m}@s{}.sim.test", m % 5)]);
    }
    let out = sim.run(2 * HOUR);
    assert_eq!(out.count(EventKind::Delivered), 300);
    assert_eq!(out.count(EventKind::Bounced), 0);
    assert_eq!(
        out.count(EventKind::Deferred),
        0,
        "shaping waits, it does not defer"
    );
    assert!(out.peak_connections[0] <= 2, "{:?}", out.peak_connections);
    // At most 60 (+1 burst) deliveries in any minute: 300 messages take about 5 minutes.
    let mut at: Vec<u64> = out.events.iter().map(|e| e.at_ms).collect();
    at.sort_unstable();
    for (i, t) in at.iter().enumerate() {
        let in_minute = at[i..].iter().take_while(|u| **u < t + 60_000).count();
        assert!(
            in_minute <= 61,
            "{in_minute} deliveries in the minute from {t}"
        );
    }
    let span = (at[at.len() - 1] - at[0]) / 1000;
    assert!((290..=320).contains(&span), "300 messages over {span} s");
    // 20 messages per connection: at least 15 connections.
    assert!(
        out.connections[0] >= 15,
        "{} connections",
        out.connections[0]
    );
}

/// The shard's side of suppression, simulated: what it hands the suppression list for each
/// outcome, and the signed VERP return path of every message when `[verp]` is configured.
#[test]
fn outcomes_are_observed_for_suppression_and_each_recipient_gets_its_verp_return_path() {
    use vmta::bounce::{Reason, Verp};
    use vmta::engine::retry::ClassifiedRetry;
    use vmta::engine::suppression::Observation;
    let world = World {
        hosts: vec![
            HostBehaviour::default(),
            HostBehaviour {
                rcpt_5xx: 1.0,
                ..Default::default()
            },
        ],
        domains: vec![
            SimDomain {
                name: "ok.sim.test".into(),
                mx: vec![0],
            },
            SimDomain {
                name: "hard.sim.test".into(),
                mx: vec![1],
            },
        ],
        dns_latency: Duration::from_millis(2),
    };
    let key = "simulation verp key";
    let run = |verp: bool, suppression: bool| {
        let dir = Dir::new("suppression");
        let mut b = EngineConfig::builder()
            .shards(1)
            .max_messages_per_connection(50)
            .suppression(suppression);
        if verp {
            b = b.verp("bounces", "bounce.sim.test", &[key]);
        }
        let retry = Arc::new(ClassifiedRetry::new(72 * 3600, 0.0));
        let mut sim = Simulation::new(world.clone(), &b.build(), retry, &dir.0, 7);
        for m in 0..20 {
            let rcpts = (0..3)
                .map(|r| {
                    let d = ["ok", "hard", "gone"][(m + r) % 3];
                    format!("u{m}-{r}@{d}.sim.test")
                })
                .collect();
            sim.submit_at(Duration::from_secs(m as u64), rcpts);
        }
        sim.run(HOUR)
    };

    let out = run(true, true);
    assert_eq!(out.count(EventKind::Delivered), 20);
    assert_eq!(out.count(EventKind::Bounced), 40);
    let mut delivered = 0;
    for o in &out.observations {
        match o {
            Observation::Delivered { tenant, address } => {
                assert_eq!(tenant, "sim");
                assert!(address.ends_with("@ok.sim.test"), "{o:?}");
                delivered += 1;
            }
            Observation::Failed {
                tenant,
                address,
                reason,
                definite_nxdomain,
            } => {
                assert_eq!(tenant, "sim");
                if address.ends_with("@hard.sim.test") {
                    assert_eq!((*reason, *definite_nxdomain), (Reason::UserUnknown, false));
                } else {
                    assert!(address.ends_with("@gone.sim.test"), "{o:?}");
                    assert_eq!((*reason, *definite_nxdomain), (Reason::HostUnknown, true));
                }
            }
        }
    }
    assert_eq!((delivered, out.observations.len()), (20, 60));
    // Every accepted message left with a return path naming its message, tenant and recipient.
    let verp = Verp::new("bounces", "bounce.sim.test", &[key.as_bytes()]);
    assert_eq!(out.mail_from.len(), 20);
    for (rcpt, from) in &out.mail_from {
        let d = verp.decode(from).unwrap_or_else(|e| panic!("{from}: {e}"));
        assert_eq!(&d.recipient, rcpt);
        let m: u64 = rcpt[1..rcpt.find('-').unwrap()].parse().unwrap();
        assert_eq!(d.message_id, format!("{:016x}-sim", m + 1));
    }

    // Without VERP the sender is kept; without suppression nothing is observed.
    let plain = run(false, false);
    assert!(plain.observations.is_empty());
    assert!(plain.mail_from.values().all(|f| f == "sender@sim.test"));
    assert_eq!(plain.count(EventKind::Delivered), 20);
}

/// A host that defers every recipient at RCPT with the same reply: each failed transaction of ten
/// recipients, on every retry until expiry, reads as the same verdict, classified once for the
/// whole run (the shaping step and the retry step share it: a second classification would show).
#[test]
fn one_reply_is_classified_once_for_shaping_and_every_recipient() {
    let dir = Dir::new("verdicts");
    let world = World {
        hosts: vec![HostBehaviour {
            rcpt_4xx: 1.0,
            ..Default::default()
        }],
        domains: vec![SimDomain {
            name: "busy.sim.test".into(),
            mx: vec![0],
        }],
        dns_latency: Duration::from_millis(2),
    };
    let mut cfg = config(3);
    cfg.retry.max_age_s = 2 * 3600;
    let retry = Arc::new(vmta::engine::retry::ClassifiedRetry::new(2 * 3600, 0.0));
    let mut sim = Simulation::new(world, &cfg, retry, &dir.0, 7);
    sim.submit_at(
        Duration::ZERO,
        (0..10).map(|r| format!("u{r}@busy.sim.test")).collect(),
    );
    let out = sim.run(4 * HOUR);
    assert!(
        out.count(EventKind::Deferred) >= 20,
        "{}",
        out.count(EventKind::Deferred)
    );
    assert_eq!(out.count(EventKind::Expired), 10);
    assert_eq!(out.classifications, 1);
}
