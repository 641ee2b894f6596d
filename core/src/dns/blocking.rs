//! A blocking front end: a [`Driver`] with its own `mio::Poll`, one lookup at a time, for the `vmta`
//! command and for preflight checks (SPF, DKIM, DMARC, reverse DNS) that run outside the engine. The
//! cache persists across calls. Not for the delivery path, which drives [`Resolver`] from its shard loop.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use super::{
    Answer, Config, Driver, Failure, MxHost, Query, Reason, Resolver, Stats, TxtRecord, random_seed,
};

/// A resolver that blocks the calling thread until each lookup finishes. Every lookup ends: the core
/// gives up after `attempts * nameservers` tries of [`Config::timeout`] each per question.
#[derive(Debug)]
pub struct BlockingResolver {
    poll: Poll,
    events: Events,
    driver: Driver,
    next_token: u64,
}

impl BlockingResolver {
    /// A resolver with `config` and an RNG seeded from the operating system.
    pub fn new(config: Config) -> io::Result<BlockingResolver> {
        BlockingResolver::with_seed(config, random_seed()?)
    }

    /// A resolver with `config` and a fixed RNG seed (reproducible MX shuffling, for tests).
    pub fn with_seed(config: Config, seed: [u8; 32]) -> io::Result<BlockingResolver> {
        let resolver = Resolver::new(config, seed)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(BlockingResolver {
            poll: Poll::new()?,
            events: Events::with_capacity(64),
            driver: Driver::new(resolver, 0),
            next_token: 0,
        })
    }

    /// A resolver configured from `/etc/resolv.conf`.
    pub fn from_system() -> io::Result<BlockingResolver> {
        BlockingResolver::new(Config::from_system()?)
    }

    /// Counters of the resolver core.
    pub fn stats(&self) -> Stats {
        self.driver.stats()
    }

    /// Runs one lookup to its end. An `Err` is a failure of the local event loop (`mio::Poll`), not of
    /// DNS.
    pub fn lookup(&mut self, query: Query) -> io::Result<Answer> {
        self.next_token += 1;
        let token = self.next_token;
        self.driver
            .lookup(self.poll.registry(), Instant::now(), token, query);
        loop {
            while let Some(event) = self.driver.poll_event() {
                if event.token == token {
                    return Ok(event.answer);
                }
            }
            let timeout = self
                .driver
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| {
                    t.saturating_duration_since(Instant::now())
                });
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in self.events.iter() {
                self.driver
                    .handle_ready(self.poll.registry(), now, event.token());
            }
            self.driver.handle_timeout(self.poll.registry(), now);
        }
    }

    /// The delivery targets for `domain` (RFC 5321 §5.1), in the order to try them.
    pub fn lookup_mx(&mut self, domain: &str) -> Result<Vec<MxHost>, Failure> {
        match self.lookup(Query::Mx(domain.to_string())) {
            Ok(Answer::Mx(r)) => r,
            other => Err(local_failure(other)),
        }
    }

    /// The A and AAAA records of `name`, in the configured family order.
    pub fn lookup_ip(&mut self, name: &str) -> Result<Vec<IpAddr>, Failure> {
        match self.lookup(Query::Ip(name.to_string())) {
            Ok(Answer::Ip(r)) => r,
            other => Err(local_failure(other)),
        }
    }

    /// The TXT records of `name`.
    pub fn lookup_txt(&mut self, name: &str) -> Result<Vec<TxtRecord>, Failure> {
        match self.lookup(Query::Txt(name.to_string())) {
            Ok(Answer::Txt(r)) => r,
            other => Err(local_failure(other)),
        }
    }

    /// The PTR names of `ip` (reverse DNS).
    pub fn lookup_ptr(&mut self, ip: IpAddr) -> Result<Vec<String>, Failure> {
        match self.lookup(Query::Ptr(ip)) {
            Ok(Answer::Ptr(r)) => r,
            other => Err(local_failure(other)),
        }
    }
}

fn local_failure(result: io::Result<Answer>) -> Failure {
    let detail = match result {
        Err(e) => format!("event loop failed: {e}"),
        Ok(a) => format!("answer of the wrong kind: {a:?}"),
    };
    Failure::temporary(Reason::SystemError, detail)
}
