//! The DNS message side of the resolver: building queries (RFC 1035 §4.1, EDNS0 per RFC 6891), checking
//! that an answer belongs to the question that was sent (RFC 5452 §4.3: ID, question and, in the caller,
//! the server address), and reading an accepted answer into what the cache stores: the CNAME chain
//! (RFC 1034 §3.6.2), the records of the asked type, or a negative answer with its TTL (RFC 2308 §5).
//!
//! Encoding and decoding is hickory-proto's; nothing here panics on bad bytes. Records outside the chain
//! of names that starts at the question are ignored (no use of additional-section glue, so nothing in an
//! answer can plant records for unrelated names).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// Builds a recursive query for `name`/`rtype` with message ID `id`; EDNS0 is added when `edns_payload`
/// is non-zero.
pub(crate) fn encode_query(id: u16, name: &Name, rtype: RecordType, edns_payload: u16) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), rtype));
    if edns_payload > 0 {
        let mut edns = Edns::new();
        edns.set_max_payload(edns_payload.max(512));
        msg.set_edns(edns);
    }
    // A query with one valid name always encodes; an error would mean a hickory-proto bug. Fall back to an
    // empty message that no server answers, which then times out like a lost datagram.
    msg.to_vec().unwrap_or_default()
}

/// Why a datagram or TCP message was not accepted as the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not a DNS message (decode error).
    Malformed(String),
    /// A well-formed message that is not the answer to our question (ID, QR bit, opcode or question
    /// differ).
    Mismatch(&'static str),
}

/// Decodes `bytes` and checks it answers query `id` for `name`/`rtype`.
pub(crate) fn check_answer(
    bytes: &[u8],
    id: u16,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, Reject> {
    // Cheap header check first, so a flood of wrong-ID datagrams is not fully decoded.
    if bytes.len() < 12 {
        return Err(Reject::Malformed("shorter than a DNS header".into()));
    }
    if u16::from_be_bytes([bytes[0], bytes[1]]) != id {
        return Err(Reject::Mismatch("message ID"));
    }
    let msg = Message::from_vec(bytes).map_err(|e| Reject::Malformed(e.to_string()))?;
    if msg.metadata.message_type != MessageType::Response {
        return Err(Reject::Mismatch("not a response"));
    }
    if msg.metadata.op_code != OpCode::Query {
        return Err(Reject::Mismatch("opcode"));
    }
    match msg.queries.as_slice() {
        [q] if q.name() == name && q.query_type() == rtype && q.query_class() == DNSClass::IN => {
            Ok(msg)
        }
        // Some servers leave the question out of error answers (FORMERR to EDNS0, NOTIMP). Such an
        // answer can only make us move on to the next try, never supply data, so it is accepted.
        [] if is_error(msg.metadata.response_code) && msg.answers.is_empty() => Ok(msg),
        _ => Err(Reject::Mismatch("question")),
    }
}

fn is_error(rcode: ResponseCode) -> bool {
    rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain
}

/// What an accepted answer says about the question.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reading {
    /// The TC bit is set: ask again over TCP.
    Truncated,
    /// An RCODE other than NOERROR/NXDOMAIN (SERVFAIL, REFUSED, FORMERR, NOTIMP, ...): try another server.
    ServerError(ResponseCode),
    /// An answer: the CNAMEs followed from the question name, then what was found at the end of the chain.
    Answer {
        /// `(owner, target, ttl)` for each CNAME followed, in order.
        cnames: Vec<(Name, Name, u32)>,
        /// What the chain ends in.
        end: End,
    },
}

/// The end of a CNAME chain in one answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum End {
    /// Records of the asked type, with the smallest TTL of the set.
    Records(Vec<RData>, u32),
    /// NXDOMAIN for the last name; the negative TTL when the answer carried an SOA.
    NxDomain(Option<u32>),
    /// The last name exists but has no records of the type (NODATA, RFC 2308 §2.2).
    NoData(Option<u32>),
    /// The chain ends at a CNAME target whose records the server did not include: ask for it.
    Incomplete,
}

/// Reads an accepted answer for `qname`/`qtype`, following at most `cname_limit + 1` CNAMEs inside it (a
/// longer chain is returned as is; the caller counts hops and fails the question).
pub(crate) fn read_answer(
    msg: &Message,
    qname: &Name,
    qtype: RecordType,
    cname_limit: u32,
) -> Reading {
    if msg.metadata.truncation {
        return Reading::Truncated;
    }
    let rcode = msg.metadata.response_code;
    if is_error(rcode) {
        return Reading::ServerError(rcode);
    }
    let mut cnames: Vec<(Name, Name, u32)> = Vec::new();
    let mut current = qname.clone();
    loop {
        let mut records = Vec::new();
        let mut ttl = u32::MAX;
        let mut cname = None;
        for r in &msg.answers {
            if r.dns_class != DNSClass::IN || r.name != current {
                continue;
            }
            if r.record_type() == qtype {
                ttl = ttl.min(r.ttl);
                records.push(r.data.clone());
            } else if let RData::CNAME(target) = &r.data
                && cname.is_none()
            {
                cname = Some((target.0.clone(), r.ttl));
            }
        }
        if !records.is_empty() {
            return Reading::Answer {
                cnames,
                end: End::Records(records, ttl),
            };
        }
        match cname {
            Some((target, ttl)) if cnames.len() as u32 <= cname_limit => {
                cnames.push((current, target.clone(), ttl));
                current = target;
            }
            _ => break,
        }
    }
    let negative_ttl = negative_ttl(msg);
    let end = if rcode == ResponseCode::NXDomain {
        End::NxDomain(negative_ttl)
    } else if cnames.is_empty() {
        End::NoData(negative_ttl)
    } else {
        End::Incomplete
    };
    Reading::Answer { cnames, end }
}

/// RFC 2308 §5: the TTL of a negative answer is the smaller of the SOA record's TTL and its MINIMUM field.
fn negative_ttl(msg: &Message) -> Option<u32> {
    msg.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME, MX, SOA};
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(id: u16, q: &str, t: RecordType) -> Message {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name(q), t));
        m
    }

    #[test]
    fn query_round_trip() {
        let bytes = encode_query(0x1234, &name("alpha.test."), RecordType::MX, 1232);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries[0].name(), &name("alpha.test."));
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    }

    #[test]
    fn checks_id_question_and_type() {
        let q = name("alpha.test.");
        let bytes = response(7, "ALPHA.test.", RecordType::MX).to_vec().unwrap();
        assert!(check_answer(&bytes, 7, &q, RecordType::MX).is_ok());
        assert_eq!(
            check_answer(&bytes, 8, &q, RecordType::MX).unwrap_err(),
            Reject::Mismatch("message ID")
        );
        assert_eq!(
            check_answer(&bytes, 7, &q, RecordType::A).unwrap_err(),
            Reject::Mismatch("question")
        );
        let other = response(7, "beta.test.", RecordType::MX).to_vec().unwrap();
        assert_eq!(
            check_answer(&other, 7, &q, RecordType::MX).unwrap_err(),
            Reject::Mismatch("question")
        );
        let mut bare = Message::new(7, MessageType::Response, OpCode::Query);
        assert_eq!(
            check_answer(&bare.to_vec().unwrap(), 7, &q, RecordType::MX).unwrap_err(),
            Reject::Mismatch("question"),
            "a NOERROR answer must carry the question"
        );
        bare.metadata.response_code = ResponseCode::FormErr;
        assert!(check_answer(&bare.to_vec().unwrap(), 7, &q, RecordType::MX).is_ok());
        let query = encode_query(7, &q, RecordType::MX, 0);
        assert_eq!(
            check_answer(&query, 7, &q, RecordType::MX).unwrap_err(),
            Reject::Mismatch("not a response")
        );
        assert!(matches!(
            check_answer(&[0, 7, 0x80, 0, 0, 1], 7, &q, RecordType::MX),
            Err(Reject::Malformed(_))
        ));
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 3);
        assert!(matches!(
            check_answer(&cut, 7, &q, RecordType::MX),
            Err(Reject::Malformed(_))
        ));
    }

    #[test]
    fn follows_cnames_and_reads_negative_ttl() {
        let mut m = response(1, "a.test.", RecordType::MX);
        m.add_answer(Record::from_rdata(
            name("a.test."),
            100,
            RData::CNAME(CNAME(name("b.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("b.test."),
            50,
            RData::MX(MX::new(10, name("mx.b.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("unrelated.test."),
            50,
            RData::MX(MX::new(10, name("evil.test."))),
        ));
        match read_answer(&m, &name("a.test."), RecordType::MX, 8) {
            Reading::Answer {
                cnames,
                end: End::Records(r, 50),
            } => {
                assert_eq!(cnames, vec![(name("a.test."), name("b.test."), 100)]);
                assert_eq!(r.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let mut nx = response(1, "x.test.", RecordType::A);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_authority(Record::from_rdata(
            name("test."),
            300,
            RData::SOA(SOA::new(
                name("ns.test."),
                name("h.test."),
                1,
                3600,
                600,
                86400,
                60,
            )),
        ));
        assert_eq!(
            read_answer(&nx, &name("x.test."), RecordType::A, 8),
            Reading::Answer {
                cnames: vec![],
                end: End::NxDomain(Some(60))
            }
        );
        let mut partial = response(1, "c.test.", RecordType::A);
        partial.add_answer(Record::from_rdata(
            name("c.test."),
            10,
            RData::CNAME(CNAME(name("elsewhere.example."))),
        ));
        assert!(matches!(
            read_answer(&partial, &name("c.test."), RecordType::A, 8),
            Reading::Answer {
                end: End::Incomplete,
                ..
            }
        ));
        let mut a = response(1, "d.test.", RecordType::A);
        a.add_answer(Record::from_rdata(
            name("d.test."),
            10,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        a.metadata.truncation = true;
        assert_eq!(
            read_answer(&a, &name("d.test."), RecordType::A, 8),
            Reading::Truncated
        );
    }

    #[test]
    fn cname_loop_inside_one_answer_stops() {
        let mut m = response(1, "l1.test.", RecordType::A);
        m.add_answer(Record::from_rdata(
            name("l1.test."),
            10,
            RData::CNAME(CNAME(name("l2.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("l2.test."),
            10,
            RData::CNAME(CNAME(name("l1.test."))),
        ));
        match read_answer(&m, &name("l1.test."), RecordType::A, 3) {
            Reading::Answer { cnames, .. } => assert_eq!(cnames.len(), 4),
            other => panic!("{other:?}"),
        }
    }
}
