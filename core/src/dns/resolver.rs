//! The sans-IO resolver core: lookups, the questions they ask, the exchanges that carry questions to
//! nameservers, and the cache between them. See the module doc of [`crate::dns`] for the call protocol.
//!
//! Three layers, each keyed by a number:
//!
//! ```text
//!  lookup (caller's token; MX, Ip, Txt, Ptr)          e.g. MX example.com -> A/AAAA per MX host
//!    └─ chase (name, type, CNAME hops so far)         cache first; follows cached CNAMEs
//!         └─ question (name, type) on the wire        shared by every chase asking the same: coalescing
//!              └─ exchange (socket slot, ID, server)  one try; timeout, TC -> TCP, next server
//! ```
//!
//! Work never recurses across layers: finished chases are queued and delivered to their lookups by
//! `run`, which also starts questions waiting for a free exchange slot.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::cache::{Cache, Data};
use super::wire::{self, End, Reading, Reject};
use super::{
    AddressFamily, Answer, Config, ConfigError, Event, ExchangeId, Failure, MxHost, Query, Reason,
    Stats, Transmit, Transport, TxtRecord,
};

/// The largest TCP message (RFC 1035 §4.2.2: a 16-bit length).
const MAX_TCP_MESSAGE: usize = 65_535;

/// What a chase ends in.
#[derive(Debug, Clone)]
enum Final {
    Records(Arc<[RData]>),
    NxDomain,
    NoData,
    Failed(Failure),
}

/// What a finished question tells the chases waiting on it.
#[derive(Debug, Clone)]
enum Resolution {
    Final(Final),
    /// The answer ended at a CNAME target without its records: ask again for the target.
    Continue(Name),
}

#[derive(Debug)]
struct Chase {
    lookup: u64,
    slot: usize,
    name: Name,
    qtype: RecordType,
    hops: u32,
}

#[derive(Debug)]
enum MxStage {
    /// Waiting for the MX records (slot 0).
    Mx,
    /// No MX records: waiting for the domain's own addresses.
    Implicit,
    /// Waiting for the addresses of each host, in delivery order (see `address_asks` for the slots).
    Hosts(Vec<(Name, u16)>),
}

#[derive(Debug)]
enum Kind {
    Mx { domain: Name, stage: MxStage },
    Ip { name: Name },
    Txt { name: Name },
    Ptr { name: Name },
}

#[derive(Debug)]
struct Lookup {
    token: u64,
    kind: Kind,
    slots: Vec<Option<Final>>,
    pending: usize,
}

#[derive(Debug)]
struct Question {
    name: Name,
    qtype: RecordType,
    waiters: Vec<u64>,
    /// Index of the nameserver for the first try; try `k` goes to `first_server + k`.
    first_server: usize,
    /// A server answered FORMERR to the query with EDNS0: ask without it from then on (RFC 6891 §7).
    no_edns: bool,
    tries: u32,
    last_error: String,
}

#[derive(Debug)]
struct Exchange {
    question: u64,
    id: u16,
    server: SocketAddr,
    transport: Transport,
    deadline: Instant,
    tcp_buf: Vec<u8>,
}

/// The sans-IO resolver. See [`crate::dns`] for the order of calls.
#[derive(Debug)]
pub struct Resolver {
    config: Config,
    rng: StdRng,
    cache: Cache,
    lookups: HashMap<u64, Lookup>,
    chases: HashMap<u64, Chase>,
    questions: HashMap<u64, Question>,
    question_index: HashMap<(Name, RecordType), u64>,
    exchanges: Vec<Option<Exchange>>,
    /// Free exchange numbers, oldest-freed first, so a just-closed number is reused last.
    free_slots: VecDeque<usize>,
    waiting: VecDeque<u64>,
    done: VecDeque<(u64, usize, Final)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_id: u64,
    /// Per nameserver: until when it is skipped for first tries after a timeout.
    server_suspect_until: Vec<Option<Instant>>,
    rotation: usize,
    stats: Stats,
}

impl Resolver {
    /// A resolver with `config` and an RNG seeded with `seed` (query IDs, MX shuffling). The same seed
    /// and the same inputs give the same outputs.
    pub fn new(config: Config, seed: [u8; 32]) -> Result<Resolver, ConfigError> {
        config.validate()?;
        let slots = config.max_in_flight;
        Ok(Resolver {
            cache: Cache::new(config.cache_capacity),
            rng: StdRng::from_seed(seed),
            lookups: HashMap::new(),
            chases: HashMap::new(),
            questions: HashMap::new(),
            question_index: HashMap::new(),
            exchanges: (0..slots).map(|_| None).collect(),
            free_slots: (0..slots).collect(),
            waiting: VecDeque::new(),
            done: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            server_suspect_until: vec![None; config.nameservers.len()],
            rotation: config.nameservers.len().saturating_sub(1),
            stats: Stats::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            evictions: self.cache.evictions,
            cache_entries: self.cache.len() as u64,
            ..self.stats
        }
    }

    /// Lookups in progress.
    pub fn lookups_in_progress(&self) -> usize {
        self.lookups.len()
    }

    /// Starts a lookup; its [`Event`] carries `token`. Then drain [`Resolver::poll_transmit`] and
    /// [`Resolver::poll_event`] (a cached answer is ready at once).
    pub fn lookup(&mut self, now: Instant, token: u64, query: Query) {
        self.stats.lookups += 1;
        let fail = |f: Failure| -> Answer {
            match &query {
                Query::Mx(_) => Answer::Mx(Err(f)),
                Query::Ip(_) => Answer::Ip(Err(f)),
                Query::Txt(_) => Answer::Txt(Err(f)),
                Query::Ptr(_) => Answer::Ptr(Err(f)),
            }
        };
        let kind = match &query {
            Query::Ptr(ip) => Ok(Kind::Ptr {
                name: Name::from(*ip),
            }),
            Query::Mx(s) | Query::Ip(s) | Query::Txt(s) => match parse_name(s) {
                Ok(name) => Ok(match &query {
                    Query::Mx(_) => Kind::Mx {
                        domain: name,
                        stage: MxStage::Mx,
                    },
                    Query::Ip(_) => Kind::Ip { name },
                    _ => Kind::Txt { name },
                }),
                Err(f) => Err(f),
            },
        };
        let kind = match kind {
            Ok(k) => k,
            Err(f) => {
                self.events.push_back(Event {
                    token,
                    answer: fail(f),
                });
                return;
            }
        };
        if self.lookups.len() >= self.config.max_lookups {
            let answer = fail(Failure::temporary(
                Reason::SystemError,
                format!("resolver busy: {} lookups in progress", self.lookups.len()),
            ));
            self.events.push_back(Event { token, answer });
            return;
        }
        let id = self.next_id();
        let asks: Vec<(Name, RecordType)> = match &kind {
            Kind::Mx { domain, .. } => vec![(domain.clone(), RecordType::MX)],
            Kind::Ip { name } => address_asks(name, self.config.family),
            Kind::Txt { name } => vec![(name.clone(), RecordType::TXT)],
            Kind::Ptr { name } => vec![(name.clone(), RecordType::PTR)],
        };
        self.lookups.insert(
            id,
            Lookup {
                token,
                kind,
                slots: Vec::new(),
                pending: 0,
            },
        );
        self.ask(now, id, asks);
        self.run(now);
    }

    /// Forgets every lookup started with `token`: no [`Event`] will come for it. Returns how many were
    /// dropped. Questions already on the wire run to their end (their answers still fill the cache and
    /// any other lookup waiting on them). Cost: a scan over the lookups in progress.
    pub fn cancel(&mut self, token: u64) -> usize {
        let before = self.lookups.len();
        self.lookups.retain(|_, l| l.token != token);
        before - self.lookups.len()
    }

    /// The next socket operation for the driver, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished lookup.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Resolver::handle_timeout`] must be called next (the earliest exchange deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchanges.iter().flatten().map(|e| e.deadline).min()
    }

    /// Expires every exchange whose deadline is at or before `now`; each moves its question to the next
    /// try or fails it.
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in 0..self.exchanges.len() {
            let expired = matches!(&self.exchanges[slot], Some(e) if e.deadline <= now);
            if expired && let Some(ex) = self.close(slot) {
                self.stats.timeouts += 1;
                if let Some(i) = self.server_index(ex.server) {
                    self.server_suspect_until[i] = Some(now + self.config.server_holddown);
                }
                let error = format!(
                    "no answer from {} within {:?} ({:?})",
                    ex.server, self.config.timeout, ex.transport
                );
                self.try_failed(now, ex.question, error);
            }
        }
        self.run(now);
    }

    /// A datagram arrived on the UDP socket of `exchange` from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        exchange: ExchangeId,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let Some(ex) = self.exchanges.get(exchange.0).and_then(Option::as_ref) else {
            self.stats.stray += 1;
            return;
        };
        if ex.transport != Transport::Udp || from != ex.server {
            self.stats.mismatched += 1;
            return;
        }
        let Some(q) = self.questions.get(&ex.question) else {
            self.stats.stray += 1;
            return;
        };
        match wire::check_answer(bytes, ex.id, &q.name, q.qtype) {
            Ok(msg) => self.accept(now, exchange.0, &msg),
            Err(Reject::Malformed(_)) => self.stats.malformed += 1,
            Err(Reject::Mismatch(_)) => self.stats.mismatched += 1,
        }
        self.run(now);
    }

    /// Bytes arrived on the TCP connection of `exchange` (any split; the core reassembles the
    /// length-prefixed message).
    pub fn handle_stream(&mut self, now: Instant, exchange: ExchangeId, bytes: &[u8]) {
        let slot = exchange.0;
        let Some(ex) = self.exchanges.get_mut(slot).and_then(Option::as_mut) else {
            self.stats.stray += 1;
            return;
        };
        if ex.transport != Transport::Tcp {
            self.stats.mismatched += 1;
            return;
        }
        let room = (MAX_TCP_MESSAGE + 2).saturating_sub(ex.tcp_buf.len());
        ex.tcp_buf
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        if ex.tcp_buf.len() < 2 {
            return;
        }
        let len = usize::from(u16::from_be_bytes([ex.tcp_buf[0], ex.tcp_buf[1]]));
        if ex.tcp_buf.len() < 2 + len {
            return;
        }
        let Some(q) = self.questions.get(&ex.question) else {
            self.stats.stray += 1;
            return;
        };
        match wire::check_answer(&ex.tcp_buf[2..2 + len], ex.id, &q.name, q.qtype) {
            Ok(msg) => self.accept(now, slot, &msg),
            Err(reject) => {
                let error = match reject {
                    Reject::Malformed(e) => {
                        self.stats.malformed += 1;
                        format!("malformed TCP answer: {e}")
                    }
                    Reject::Mismatch(what) => {
                        self.stats.mismatched += 1;
                        format!("TCP answer with the wrong {what}")
                    }
                };
                if let Some(ex) = self.close(slot) {
                    self.try_failed(now, ex.question, error);
                }
            }
        }
        self.run(now);
    }

    /// The socket of `exchange` failed (connection refused or reset, EOF before a full answer, a send
    /// error). The try counts as failed and the next one starts.
    pub fn handle_error(&mut self, now: Instant, exchange: ExchangeId, error: &str) {
        let Some(ex) = self.close(exchange.0) else {
            self.stats.stray += 1;
            return;
        };
        self.stats.io_errors += 1;
        let error = format!("{} ({:?}): {error}", ex.server, ex.transport);
        self.try_failed(now, ex.question, error);
        self.run(now);
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Gives lookup `id` one slot per ask; each is answered from the cache or becomes a chase.
    fn ask(&mut self, now: Instant, id: u64, asks: Vec<(Name, RecordType)>) {
        if let Some(l) = self.lookups.get_mut(&id) {
            l.slots = vec![None; asks.len()];
            l.pending = asks.len();
        }
        for (slot, (name, qtype)) in asks.into_iter().enumerate() {
            match self.answer_from_cache(now, name, qtype, 0) {
                Ok(fin) => self.done.push_back((id, slot, fin)),
                Err((name, hops)) => {
                    let cid = self.next_id();
                    self.chases.insert(
                        cid,
                        Chase {
                            lookup: id,
                            slot,
                            name: name.clone(),
                            qtype,
                            hops,
                        },
                    );
                    self.attach(now, cid, name, qtype);
                }
            }
        }
    }

    /// Answers `name`/`qtype` from the cache, following cached CNAMEs (counting `hops`). `Err` is the
    /// name to ask the wire for, with the hops so far.
    fn answer_from_cache(
        &mut self,
        now: Instant,
        mut name: Name,
        qtype: RecordType,
        mut hops: u32,
    ) -> Result<Final, (Name, u32)> {
        let limit = self.config.cname_limit;
        loop {
            if hops > limit {
                return Ok(Final::Failed(Failure::temporary(
                    Reason::NetworkError,
                    format!("CNAME chain longer than {limit} at {name}"),
                )));
            }
            let hit = match self.cache.get(now, &name, qtype) {
                Some(Data::Records(r)) => Some(Final::Records(r.clone())),
                Some(Data::NxDomain) => Some(Final::NxDomain),
                Some(Data::NoData) => Some(Final::NoData),
                Some(Data::Cname(_)) | None => None,
            };
            if let Some(fin) = hit {
                self.stats.cache_hits += 1;
                return Ok(fin);
            }
            match self.cache.get(now, &name, RecordType::CNAME) {
                Some(Data::Cname(target)) => {
                    name = target.clone();
                    hops += 1;
                }
                _ => {
                    self.stats.cache_misses += 1;
                    return Err((name, hops));
                }
            }
        }
    }

    /// Moves a chase on after its question ended in a CNAME: from the cache, else onto a question.
    fn step_chase(&mut self, now: Instant, cid: u64) {
        let Some((name, qtype, hops)) = self
            .chases
            .get(&cid)
            .map(|c| (c.name.clone(), c.qtype, c.hops))
        else {
            return;
        };
        match self.answer_from_cache(now, name, qtype, hops) {
            Ok(fin) => self.finish_chase(cid, fin),
            Err((name, hops)) => {
                if let Some(chase) = self.chases.get_mut(&cid) {
                    chase.name = name.clone();
                    chase.hops = hops;
                }
                self.attach(now, cid, name, qtype);
            }
        }
    }

    /// Puts a chase on the question for `name`/`qtype`, joining one already on the wire.
    fn attach(&mut self, now: Instant, cid: u64, name: Name, qtype: RecordType) {
        let key = (name.to_lowercase(), qtype);
        if let Some(qid) = self.question_index.get(&key) {
            self.stats.coalesced += 1;
            if let Some(q) = self.questions.get_mut(qid) {
                q.waiters.push(cid);
            }
            return;
        }
        let qid = self.next_id();
        let first_server = self.pick_first_server(now);
        self.question_index.insert(key.clone(), qid);
        self.questions.insert(
            qid,
            Question {
                name: key.0,
                qtype: key.1,
                waiters: vec![cid],
                tries: 0,
                first_server,
                no_edns: false,
                last_error: String::new(),
            },
        );
        self.start_try(now, qid);
    }

    fn finish_chase(&mut self, cid: u64, fin: Final) {
        if let Some(c) = self.chases.remove(&cid) {
            self.done.push_back((c.lookup, c.slot, fin));
        }
    }

    /// The nameserver a new question tries first: the next in turn with `rotate`, else the first; either
    /// way skipping servers that timed out within [`Config::server_holddown`] while another is not.
    fn pick_first_server(&mut self, now: Instant) -> usize {
        let n = self.config.nameservers.len();
        let start = if self.config.rotate {
            self.rotation = (self.rotation + 1) % n;
            self.rotation
        } else {
            0
        };
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.server_suspect_until[i].is_none_or(|t| t <= now))
            .unwrap_or(start)
    }

    fn server_index(&self, server: SocketAddr) -> Option<usize> {
        self.config.nameservers.iter().position(|s| *s == server)
    }

    /// Sends the question's next try over UDP, or queues it until an exchange slot is free.
    fn start_try(&mut self, now: Instant, qid: u64) {
        let Some(q) = self.questions.get(&qid) else {
            return;
        };
        let servers = &self.config.nameservers;
        let server = servers[(q.first_server + q.tries as usize) % servers.len()];
        if self.free_slots.is_empty() {
            self.waiting.push_back(qid);
        } else {
            self.open(now, qid, server, Transport::Udp);
        }
    }

    fn open(&mut self, now: Instant, qid: u64, server: SocketAddr, transport: Transport) {
        let Some(q) = self.questions.get(&qid) else {
            return;
        };
        let Some(slot) = self.free_slots.pop_front() else {
            // Callers free a slot first; should none be free, the question waits for one (over UDP).
            self.waiting.push_back(qid);
            return;
        };
        let id: u16 = self.rng.random();
        let edns = if q.no_edns {
            0
        } else {
            self.config.edns_payload
        };
        let mut payload = wire::encode_query(id, &q.name, q.qtype, edns);
        match transport {
            Transport::Udp => self.stats.udp_queries += 1,
            Transport::Tcp => {
                self.stats.tcp_queries += 1;
                let len = (payload.len() as u16).to_be_bytes();
                payload.splice(0..0, len);
            }
        }
        self.exchanges[slot] = Some(Exchange {
            question: qid,
            id,
            server,
            transport,
            deadline: now + self.config.timeout,
            tcp_buf: Vec::new(),
        });
        self.transmits.push_back(Transmit::Send {
            exchange: ExchangeId(slot),
            server,
            transport,
            payload,
        });
    }

    fn close(&mut self, slot: usize) -> Option<Exchange> {
        let ex = self.exchanges.get_mut(slot)?.take()?;
        self.free_slots.push_back(slot);
        self.transmits.push_back(Transmit::Close {
            exchange: ExchangeId(slot),
        });
        Some(ex)
    }

    fn try_failed(&mut self, now: Instant, qid: u64, error: String) {
        let total = self
            .config
            .attempts
            .saturating_mul(self.config.nameservers.len() as u32);
        let Some(q) = self.questions.get_mut(&qid) else {
            return;
        };
        q.tries += 1;
        q.last_error = error;
        if q.tries < total {
            self.start_try(now, qid);
        } else {
            let f = Failure::temporary(
                Reason::NetworkError,
                format!(
                    "{} {} failed after {} tries; last: {}",
                    q.name, q.qtype, q.tries, q.last_error
                ),
            );
            self.finish_question(now, qid, Resolution::Final(Final::Failed(f)), 0);
        }
    }

    /// An accepted answer on exchange `slot`.
    fn accept(&mut self, now: Instant, slot: usize, msg: &Message) {
        let Some(ex) = self.close(slot) else {
            return;
        };
        let qid = ex.question;
        let Some(q) = self.questions.get(&qid) else {
            return;
        };
        self.stats.answers += 1;
        if let Some(i) = self.server_index(ex.server) {
            self.server_suspect_until[i] = None;
        }
        let (qname, qtype) = (q.name.clone(), q.qtype);
        match wire::read_answer(msg, &qname, qtype, self.config.cname_limit) {
            Reading::Truncated if ex.transport == Transport::Udp => {
                self.stats.truncated += 1;
                self.open(now, qid, ex.server, Transport::Tcp);
            }
            Reading::Truncated => {
                self.stats.server_errors += 1;
                self.try_failed(
                    now,
                    qid,
                    format!("{}: truncated answer over TCP", ex.server),
                );
            }
            Reading::ServerError(ResponseCode::FormErr)
                if self.config.edns_payload > 0
                    && self.questions.get(&qid).is_some_and(|q| !q.no_edns) =>
            {
                // RFC 6891 §7: a server that does not understand EDNS0 gets the query without it.
                self.stats.server_errors += 1;
                if let Some(q) = self.questions.get_mut(&qid) {
                    q.no_edns = true;
                }
                self.open(now, qid, ex.server, ex.transport);
            }
            Reading::ServerError(rcode) => {
                self.stats.server_errors += 1;
                self.try_failed(now, qid, format!("{} answered {rcode}", ex.server));
            }
            Reading::Answer { cnames, end } => {
                let hops = cnames.len() as u32;
                let mut last = qname.clone();
                for (owner, target, ttl) in cnames {
                    let ttl = self.clamp(ttl);
                    self.cache.insert(
                        now,
                        &owner,
                        RecordType::CNAME,
                        Data::Cname(target.clone()),
                        ttl,
                    );
                    last = target;
                }
                let resolution = match end {
                    End::Records(records, ttl) => {
                        let records: Arc<[RData]> = records.into();
                        let ttl = self.clamp(ttl);
                        self.cache
                            .insert(now, &last, qtype, Data::Records(records.clone()), ttl);
                        Resolution::Final(Final::Records(records))
                    }
                    End::NxDomain(ttl) => {
                        if let Some(ttl) = ttl {
                            let ttl = self.clamp_negative(ttl);
                            self.cache.insert(now, &last, qtype, Data::NxDomain, ttl);
                        }
                        Resolution::Final(Final::NxDomain)
                    }
                    End::NoData(ttl) => {
                        if let Some(ttl) = ttl {
                            let ttl = self.clamp_negative(ttl);
                            self.cache.insert(now, &last, qtype, Data::NoData, ttl);
                        }
                        Resolution::Final(Final::NoData)
                    }
                    End::Incomplete => Resolution::Continue(last),
                };
                self.finish_question(now, qid, resolution, hops);
            }
        }
    }

    fn clamp(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(self.config.min_ttl, self.config.max_ttl)
    }

    fn clamp_negative(&self, ttl: u32) -> Duration {
        let max = self.config.max_negative_ttl.max(self.config.min_ttl);
        Duration::from_secs(u64::from(ttl)).clamp(self.config.min_ttl, max)
    }

    fn finish_question(&mut self, now: Instant, qid: u64, resolution: Resolution, hops: u32) {
        let Some(q) = self.questions.remove(&qid) else {
            return;
        };
        self.question_index.remove(&(q.name.clone(), q.qtype));
        let limit = self.config.cname_limit;
        for cid in q.waiters {
            let Some(chase) = self.chases.get_mut(&cid) else {
                continue;
            };
            chase.hops = chase.hops.saturating_add(hops);
            if let Resolution::Continue(target) = &resolution {
                chase.name = target.clone();
            }
            if chase.hops > limit {
                let f = Failure::temporary(
                    Reason::NetworkError,
                    format!("CNAME chain longer than {limit} from {}", q.name),
                );
                self.finish_chase(cid, Final::Failed(f));
                continue;
            }
            match &resolution {
                Resolution::Final(fin) => self.finish_chase(cid, fin.clone()),
                Resolution::Continue(_) => self.step_chase(now, cid),
            }
        }
    }

    /// Delivers finished chases to their lookups and starts queued questions while slots are free.
    fn run(&mut self, now: Instant) {
        loop {
            if let Some((lid, slot, fin)) = self.done.pop_front() {
                let ready = match self.lookups.get_mut(&lid) {
                    Some(l) if slot < l.slots.len() && l.slots[slot].is_none() => {
                        l.slots[slot] = Some(fin);
                        l.pending -= 1;
                        l.pending == 0
                    }
                    _ => false,
                };
                if ready {
                    self.advance(now, lid);
                }
                continue;
            }
            if !self.free_slots.is_empty()
                && let Some(qid) = self.waiting.pop_front()
            {
                self.start_try(now, qid);
                continue;
            }
            break;
        }
    }

    /// All slots of lookup `lid` are filled: finish it or start its next stage.
    fn advance(&mut self, now: Instant, lid: u64) {
        let Some(mut lookup) = self.lookups.remove(&lid) else {
            return;
        };
        let slots: Vec<Final> = std::mem::take(&mut lookup.slots)
            .into_iter()
            .map(|s| s.unwrap_or(Final::NoData))
            .collect();
        let family = self.config.family;
        let answer = match &mut lookup.kind {
            Kind::Txt { name } => Answer::Txt(single(&slots[0], name, "TXT").map(|rs| {
                rs.iter()
                    .filter_map(|r| match r {
                        RData::TXT(t) => Some(TxtRecord {
                            strings: t.txt_data.iter().map(|s| s.to_vec()).collect(),
                        }),
                        _ => None,
                    })
                    .collect()
            })),
            Kind::Ptr { name } => Answer::Ptr(single(&slots[0], name, "PTR").map(|rs| {
                rs.iter()
                    .filter_map(|r| match r {
                        RData::PTR(p) => Some(display_name(&p.0)),
                        _ => None,
                    })
                    .collect()
            })),
            Kind::Ip { name } => Answer::Ip(addresses(name, &slots, family)),
            Kind::Mx { domain, stage } => match stage {
                MxStage::Mx => match &slots[0] {
                    Final::Failed(f) => Answer::Mx(Err(f.clone())),
                    Final::NxDomain => Answer::Mx(Err(Failure::permanent(
                        Reason::HostUnknown,
                        format!("NXDOMAIN for {domain}"),
                    ))),
                    Final::NoData => {
                        *stage = MxStage::Implicit;
                        let asks = address_asks(domain, family);
                        self.lookups.insert(lid, lookup);
                        self.ask(now, lid, asks);
                        return;
                    }
                    Final::Records(records) => match self.order_mx(domain, records) {
                        Err(f) => Answer::Mx(Err(f)),
                        Ok(hosts) => {
                            let asks = hosts
                                .iter()
                                .flat_map(|(h, _)| address_asks(h, family))
                                .collect();
                            *stage = MxStage::Hosts(hosts);
                            self.lookups.insert(lid, lookup);
                            self.ask(now, lid, asks);
                            return;
                        }
                    },
                },
                MxStage::Implicit => Answer::Mx(match addresses(domain, &slots, family) {
                    Ok(a) if a.is_empty() => Err(Failure::permanent(
                        Reason::HostUnknown,
                        format!("{domain} has neither MX nor address records"),
                    )),
                    Ok(a) => Ok(vec![MxHost {
                        name: display_name(domain),
                        preference: 0,
                        addresses: a,
                        implicit: true,
                    }]),
                    Err(f) if f.permanent => Err(Failure::permanent(
                        Reason::HostUnknown,
                        format!("{domain} has no MX records and {}", f.detail),
                    )),
                    Err(f) => Err(f),
                }),
                MxStage::Hosts(hosts) => Answer::Mx(mx_targets(domain, hosts, &slots, family)),
            },
        };
        self.events.push_back(Event {
            token: lookup.token,
            answer,
        });
    }

    /// RFC 5321 §5.1 ordering and RFC 7505 null MX.
    fn order_mx(&mut self, domain: &Name, records: &[RData]) -> Result<Vec<(Name, u16)>, Failure> {
        let mut hosts: Vec<(Name, u16)> = records
            .iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some((mx.exchange.clone(), mx.preference)),
                _ => None,
            })
            .collect();
        if !hosts.is_empty() && hosts.iter().all(|(h, _)| h.is_root()) {
            return Err(Failure::permanent(
                Reason::NotAccept,
                format!("{domain} publishes a null MX (RFC 7505): it accepts no mail"),
            ));
        }
        hosts.retain(|(h, _)| !h.is_root());
        if hosts.is_empty() {
            // MX-typed records that did not decode as MX data (an empty RDATA, say).
            return Err(Failure::temporary(
                Reason::NetworkError,
                format!("{domain} has MX records without a usable exchange"),
            ));
        }
        hosts.sort_by_key(|(_, p)| *p);
        // Drop repeated hosts (keeping the best preference); names compare case-insensitively.
        if hosts.len() <= 32 {
            let mut kept: Vec<(Name, u16)> = Vec::with_capacity(hosts.len());
            for (h, p) in hosts {
                if !kept.iter().any(|(k, _)| *k == h) {
                    kept.push((h, p));
                }
            }
            hosts = kept;
        } else {
            let mut seen = std::collections::HashSet::new();
            hosts.retain(|(h, _)| seen.insert(h.clone()));
        }
        // Fisher-Yates within each run of equal preference.
        let mut start = 0;
        while start < hosts.len() {
            let pref = hosts[start].1;
            let end = hosts[start..]
                .iter()
                .position(|(_, p)| *p != pref)
                .map_or(hosts.len(), |n| start + n);
            for i in (start + 1..end).rev() {
                let j = self.rng.random_range(start..=i);
                hosts.swap(i, j);
            }
            start = end;
        }
        hosts.truncate(self.config.max_mx_hosts);
        Ok(hosts)
    }
}

/// Parses a caller's domain name into an absolute name.
fn parse_name(s: &str) -> Result<Name, Failure> {
    let invalid = |e: String| {
        Failure::permanent(
            Reason::HostUnknown,
            format!("invalid domain name {s:?}: {e}"),
        )
    };
    let s = s.trim();
    if s.is_empty() || s == "." {
        return Err(invalid("empty".into()));
    }
    let parsed = if s.is_ascii() {
        Name::from_ascii(s)
    } else {
        Name::from_utf8(s)
    };
    let mut name = parsed.map_err(|e| invalid(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name)
}

fn display_name(name: &Name) -> String {
    let s = name.to_ascii();
    s.strip_suffix('.').map(str::to_string).unwrap_or(s)
}

/// The A and/or AAAA questions for `name` per `family`, A first: the same count for every name, so MX
/// host `i` owns slots `i * n .. (i + 1) * n`.
fn address_asks(name: &Name, family: AddressFamily) -> Vec<(Name, RecordType)> {
    let mut asks = Vec::with_capacity(2);
    if family.wants_v4() {
        asks.push((name.clone(), RecordType::A));
    }
    if family.wants_v6() {
        asks.push((name.clone(), RecordType::AAAA));
    }
    asks
}

fn single<'a>(fin: &'a Final, name: &Name, what: &str) -> Result<&'a [RData], Failure> {
    match fin {
        Final::Records(r) => Ok(r),
        Final::NoData => Ok(&[]),
        Final::NxDomain => Err(Failure::permanent(
            Reason::HostUnknown,
            format!("NXDOMAIN for {name} {what}"),
        )),
        Final::Failed(f) => Err(f.clone()),
    }
}

/// Combines the address slots of one name ([A, AAAA] or one of them, per family).
fn addresses(name: &Name, slots: &[Final], family: AddressFamily) -> Result<Vec<IpAddr>, Failure> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut nx = false;
    let mut failure = None;
    for s in slots {
        match s {
            Final::Records(rs) => {
                for r in rs.iter() {
                    match r {
                        RData::A(a) => v4.push(IpAddr::V4(a.0)),
                        RData::AAAA(a) => v6.push(IpAddr::V6(a.0)),
                        _ => {}
                    }
                }
            }
            Final::NxDomain => nx = true,
            Final::NoData => {}
            Final::Failed(f) => failure = Some(f.clone()),
        }
    }
    let (mut out, rest) = match family {
        AddressFamily::Ipv6First | AddressFamily::Ipv6Only => (v6, v4),
        AddressFamily::Ipv4First | AddressFamily::Ipv4Only => (v4, v6),
    };
    out.extend(rest);
    if !out.is_empty() {
        return Ok(out);
    }
    if let Some(f) = failure {
        return Err(f);
    }
    if nx {
        return Err(Failure::permanent(
            Reason::HostUnknown,
            format!("NXDOMAIN for {name}"),
        ));
    }
    Ok(out)
}

fn mx_targets(
    domain: &Name,
    hosts: &[(Name, u16)],
    slots: &[Final],
    family: AddressFamily,
) -> Result<Vec<MxHost>, Failure> {
    let per_host = address_asks(domain, family).len();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, (host, preference)) in hosts.iter().enumerate() {
        let host_slots = slots.get(i * per_host..(i + 1) * per_host).unwrap_or(&[]);
        match addresses(host, host_slots, family) {
            Ok(a) if !a.is_empty() => out.push(MxHost {
                name: display_name(host),
                preference: *preference,
                addresses: a,
                implicit: false,
            }),
            Ok(_) => skipped.push(format!("{} has no address", display_name(host))),
            Err(f) => skipped.push(format!("{}: {}", display_name(host), f.detail)),
        }
    }
    if out.is_empty() {
        return Err(Failure::temporary(
            Reason::NetworkError,
            format!(
                "no MX host of {domain} has an address ({})",
                skipped.join("; ")
            ),
        ));
    }
    Ok(out)
}
