//! The resolver's cache: one entry per (name, type), holding records, a CNAME, or a negative answer
//! (NXDOMAIN / NODATA, RFC 2308 §5), each with an expiry computed from its TTL clamped to the configured
//! bounds. The size is bounded: inserting into a full cache evicts the entry closest to expiry (expired
//! entries first). Failures (timeouts, SERVFAIL) are not cached.
//!
//! Not implemented: RFC 2308 §7.1 caching of SERVFAIL, serve-stale (RFC 8767), prefetching.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::{Name, RData, RecordType};

/// What the cache holds for a name and type.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::enum_variant_names)] // NoData is the RFC 2308 term.
pub(crate) enum Data {
    /// The records of the type.
    Records(Arc<[RData]>),
    /// The name is an alias (cached under type CNAME, valid for every type).
    Cname(Name),
    /// The name does not exist.
    NxDomain,
    /// The name exists without records of the type.
    NoData,
}

#[derive(Debug)]
struct Entry {
    data: Data,
    expires: Instant,
    seq: u64,
}

/// A bounded TTL cache keyed by type and lower-cased name.
///
/// The key is the type (two bytes) followed by the name's labels in wire form (length byte, lower-cased
/// bytes), built in a reused buffer: a lookup costs one pass over the name and one hash of a byte slice,
/// with no allocation.
#[derive(Debug)]
pub(crate) struct Cache {
    entries: HashMap<Box<[u8]>, Entry>,
    by_expiry: BTreeMap<(Instant, u64), Box<[u8]>>,
    capacity: usize,
    seq: u64,
    scratch: Vec<u8>,
    pub(crate) evictions: u64,
}

fn write_key(buf: &mut Vec<u8>, name: &Name, rtype: RecordType) {
    buf.clear();
    buf.extend_from_slice(&u16::from(rtype).to_be_bytes());
    for label in name.iter() {
        buf.push(label.len() as u8);
        buf.extend(label.iter().map(u8::to_ascii_lowercase));
    }
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            capacity: capacity.max(1),
            seq: 0,
            scratch: Vec::with_capacity(258),
            evictions: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The live entry for `name`/`rtype`; an expired entry is removed and not returned.
    pub(crate) fn get(&mut self, now: Instant, name: &Name, rtype: RecordType) -> Option<&Data> {
        write_key(&mut self.scratch, name, rtype);
        let expired = match self.entries.get(&self.scratch[..]) {
            None => return None,
            Some(e) => e.expires <= now,
        };
        if expired {
            if let Some(e) = self.entries.remove(&self.scratch[..]) {
                self.by_expiry.remove(&(e.expires, e.seq));
            }
            return None;
        }
        self.entries.get(&self.scratch[..]).map(|e| &e.data)
    }

    /// Stores `data` for `ttl` from `now`. A zero TTL stores nothing (RFC 1035 §3.2.1: use only for the
    /// transaction in progress).
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        name: &Name,
        rtype: RecordType,
        data: Data,
        ttl: Duration,
    ) {
        if ttl.is_zero() {
            return;
        }
        write_key(&mut self.scratch, name, rtype);
        let key: Box<[u8]> = self.scratch.as_slice().into();
        if let Some(old) = self.entries.remove(&key) {
            self.by_expiry.remove(&(old.expires, old.seq));
        }
        while self.entries.len() >= self.capacity {
            let Some((_, victim)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&victim);
            self.evictions += 1;
        }
        self.seq += 1;
        let expires = now + ttl;
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.entries.insert(
            key,
            Entry {
                data,
                expires,
                seq: self.seq,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn expiry_case_and_eviction() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        c.insert(
            t0,
            &n("A.test."),
            RecordType::MX,
            Data::NoData,
            Duration::from_secs(10),
        );
        assert_eq!(
            c.get(t0, &n("a.TEST."), RecordType::MX),
            Some(&Data::NoData)
        );
        assert_eq!(c.get(t0, &n("a.test."), RecordType::A), None);
        assert_eq!(
            c.get(t0 + Duration::from_secs(10), &n("a.test."), RecordType::MX),
            None
        );
        assert_eq!(c.len(), 0);
        c.insert(
            t0,
            &n("x.test."),
            RecordType::A,
            Data::NxDomain,
            Duration::from_secs(5),
        );
        c.insert(
            t0,
            &n("y.test."),
            RecordType::A,
            Data::NxDomain,
            Duration::from_secs(50),
        );
        c.insert(
            t0,
            &n("z.test."),
            RecordType::A,
            Data::NxDomain,
            Duration::from_secs(20),
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.evictions, 1);
        assert_eq!(c.get(t0, &n("x.test."), RecordType::A), None);
        assert!(c.get(t0, &n("y.test."), RecordType::A).is_some());
        c.insert(
            t0,
            &n("y.test."),
            RecordType::A,
            Data::NoData,
            Duration::from_secs(1),
        );
        assert_eq!(c.len(), 2);
        c.insert(
            t0,
            &n("w.test."),
            RecordType::A,
            Data::NoData,
            Duration::ZERO,
        );
        assert_eq!(c.get(t0, &n("w.test."), RecordType::A), None);
    }
}
