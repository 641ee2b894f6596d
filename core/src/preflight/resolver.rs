//! [`DnsLookup`] over vmta's own resolver ([`crate::dns::BlockingResolver`]), for the `vmta preflight`
//! command and the tests that run preflight against a real DNS server.
//!
//! The resolver answers delivery questions, so two mappings are approximate: `a`/`aaaa` ask for both
//! families and keep one; `mx` returns the MX hosts the resolver kept (those with addresses), an
//! implicit MX as no MX records, and a null MX (RFC 7505) as one record with an empty exchange. A domain
//! whose MX hosts have no address at all comes back from the resolver as a temporary failure, so the
//! `mx` check warns about it instead of failing.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{DnsLookup, Lookup, LookupError};
use crate::dns::{BlockingResolver, Failure, Reason};

/// Preflight's DNS over a [`BlockingResolver`].
#[derive(Debug)]
pub struct ResolverLookup {
    resolver: RefCell<BlockingResolver>,
}

impl ResolverLookup {
    /// Wraps a resolver.
    pub fn new(resolver: BlockingResolver) -> ResolverLookup {
        ResolverLookup {
            resolver: RefCell::new(resolver),
        }
    }
}

fn error(f: Failure) -> LookupError {
    if f.permanent && f.reason == Reason::HostUnknown {
        LookupError::NxDomain
    } else {
        LookupError::Temporary(f.to_string())
    }
}

impl DnsLookup for ResolverLookup {
    fn txt(&self, name: &str) -> Lookup<String> {
        let records = self.resolver.borrow_mut().lookup_txt(name).map_err(error)?;
        Ok(records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.concatenated()).into_owned())
            .collect())
    }

    fn a(&self, name: &str) -> Lookup<Ipv4Addr> {
        let ips = self.resolver.borrow_mut().lookup_ip(name).map_err(error)?;
        Ok(ips
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr> {
        let ips = self.resolver.borrow_mut().lookup_ip(name).map_err(error)?;
        Ok(ips
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
            .collect())
    }

    fn mx(&self, name: &str) -> Lookup<(u16, String)> {
        match self.resolver.borrow_mut().lookup_mx(name) {
            Ok(hosts) => Ok(hosts
                .into_iter()
                .filter(|h| !h.implicit)
                .map(|h| (h.preference, h.name))
                .collect()),
            Err(f) if f.reason == Reason::NotAccept => Ok(vec![(0, String::new())]),
            Err(f) => Err(error(f)),
        }
    }

    fn ptr(&self, ip: IpAddr) -> Lookup<String> {
        self.resolver.borrow_mut().lookup_ptr(ip).map_err(error)
    }
}
