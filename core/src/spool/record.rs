//! The on-disk format of spool segments: the segment header, the record frame and the three record
//! payloads (message, state change, cancel).
//!
//! This module is pure: it encodes into `Vec<u8>` and decodes from `&[u8]`, never touches a file, and
//! never trusts a length it reads. Every decoder returns a named [`FormatError`] on bad bytes.
//!
//! # Segment header (80 bytes)
//!
//! Two identical 40-byte copies at offsets 0 and 40, so one damaged sector does not lose the segment:
//!
//! ```text
//! 0   magic "VMTASEG1"         8 bytes
//! 8   segment id               u32 LE
//! 12  format version (1)       u16 LE
//! 14  reserved (0)             u16
//! 16  salt                     u64 LE   random per segment, mixed into every record checksum
//! 24  next message id          u64 LE   the id counter when the segment was created
//! 32  reserved (0)             u32
//! 36  CRC32C of bytes 0..36    u32 LE
//! ```
//!
//! # Record frame (24-byte header, payload, zero padding to a multiple of 8)
//!
//! ```text
//! 0   magic 0x564D5152 ("RQMV" in LE bytes)   u32 LE
//! 4   payload length                          u32 LE
//! 8   kind (1 message, 2 state, 3 cancel)     u8
//! 9   flags (0)                               u8
//! 10  reserved (0)                            u16
//! 12  payload CRC32C(salt LE || payload)      u32 LE
//! 16  header CRC32C(salt LE || bytes 0..16)   u32 LE
//! 20  reserved (0)                            u32
//! ```
//!
//! The header checksum lets recovery resynchronise after damage cheaply (a candidate offset costs 16
//! bytes of CRC before any payload is hashed). The salt, a random number stored in the segment header,
//! is mixed into both checksums so that a record forged inside a message body (bodies are written by
//! whoever submits mail) never validates when recovery scans past a damaged record into that body.

#![forbid(unsafe_code)]

use std::fmt;

/// Size of one copy of the segment header.
pub const SEGMENT_HEADER_COPY: usize = 40;
/// Size of the segment header (two copies); the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = 2 * SEGMENT_HEADER_COPY;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 24;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// The record magic number.
pub const RECORD_MAGIC: u32 = 0x564D_5152;
/// The segment magic.
pub const SEGMENT_MAGIC: &[u8; 8] = b"VMTASEG1";
/// The only format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Hard limit on the payload of one record (1 GiB): segments use 32-bit offsets.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// Hard limit on an address, a tenant, a tag key or value (bytes).
pub const MAX_FIELD: usize = 4096;
/// Hard limit on a reply summary kept with a state change (longer ones are cut at a char boundary).
pub const MAX_REPLY: usize = 512;
/// Hard limit on recipients per message.
pub const MAX_RECIPIENTS: usize = u16::MAX as usize;
/// Hard limit on metadata tags per message.
pub const MAX_TAGS: usize = 256;

/// Why bytes are not a valid segment header, record or payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    Short,
    /// The magic number is wrong.
    Magic,
    /// A checksum does not match.
    Checksum,
    /// A reserved field is not zero, or a version or kind is unknown.
    Unknown,
    /// A length field points outside the record or exceeds a hard limit.
    Length,
    /// A text field is not UTF-8.
    Utf8,
    /// A state or priority byte has no meaning.
    Value,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormatError::Short => "truncated",
            FormatError::Magic => "bad magic number",
            FormatError::Checksum => "checksum mismatch",
            FormatError::Unknown => "unknown version, kind or reserved bits",
            FormatError::Length => "length out of bounds",
            FormatError::Utf8 => "text is not UTF-8",
            FormatError::Value => "field value out of range",
        })
    }
}

impl std::error::Error for FormatError {}

/// The state of one recipient of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecipientState {
    /// Accepted, never attempted.
    Queued = 0,
    /// Attempted, failed temporarily; retry at `next_attempt`.
    Deferred = 1,
    /// Held by an operator: not attempted until released (set to `Queued` or `Deferred`).
    Held = 2,
    /// Delivered (final).
    Delivered = 3,
    /// Failed permanently; a bounce is due or was sent (final).
    Bounced = 4,
    /// Gave up after the maximum queue lifetime (final).
    Expired = 5,
    /// Cancelled by the host or an operator (final).
    Cancelled = 6,
}

impl RecipientState {
    /// Every state, in numeric order.
    pub const ALL: [RecipientState; 7] = [
        RecipientState::Queued,
        RecipientState::Deferred,
        RecipientState::Held,
        RecipientState::Delivered,
        RecipientState::Bounced,
        RecipientState::Expired,
        RecipientState::Cancelled,
    ];

    /// True for states after which nothing more happens to the recipient.
    pub fn is_final(self) -> bool {
        self as u8 >= RecipientState::Delivered as u8
    }

    /// The lower-case name used by the CLI and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Queued => "queued",
            RecipientState::Deferred => "deferred",
            RecipientState::Held => "held",
            RecipientState::Delivered => "delivered",
            RecipientState::Bounced => "bounced",
            RecipientState::Expired => "expired",
            RecipientState::Cancelled => "cancelled",
        }
    }

    /// The state with numeric value `v`.
    pub fn from_u8(v: u8) -> Option<RecipientState> {
        RecipientState::ALL.get(usize::from(v)).copied()
    }
}

impl fmt::Display for RecipientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Delivery priority of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Priority {
    /// Password resets, receipts: scheduled ahead of bulk.
    #[default]
    Transactional = 0,
    /// Newsletters and campaigns.
    Bulk = 1,
}

impl Priority {
    /// The priority with numeric value `v`.
    pub fn from_u8(v: u8) -> Option<Priority> {
        match v {
            0 => Some(Priority::Transactional),
            1 => Some(Priority::Bulk),
            _ => None,
        }
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Transactional => "transactional",
            Priority::Bulk => "bulk",
        }
    }
}

/// Per-message flags that change how the message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageFlags(pub u8);

impl MessageFlags {
    /// The body has 8-bit content: send with `BODY=8BITMIME` (RFC 6152).
    pub const EIGHT_BIT: MessageFlags = MessageFlags(1);
    /// Addresses or headers use UTF-8: send with `SMTPUTF8` (RFC 6531).
    pub const SMTPUTF8: MessageFlags = MessageFlags(2);
    /// The submitter asked for TLS to be required on every hop (RFC 8689 `REQUIRETLS`).
    pub const REQUIRETLS: MessageFlags = MessageFlags(4);
    /// Every line of the body ends with CRLF, with no bare CR or LF anywhere: established when the
    /// message was submitted (validation normalises line ends), so the client need not scan the
    /// body again before `BDAT`.
    pub const CRLF: MessageFlags = MessageFlags(8);

    /// True if every flag of `other` is set.
    pub fn contains(self, other: MessageFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for MessageFlags {
    type Output = MessageFlags;
    fn bitor(self, rhs: MessageFlags) -> MessageFlags {
        MessageFlags(self.0 | rhs.0)
    }
}

/// The kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A whole message: envelope, per-recipient state, body.
    Message = 1,
    /// A state change of one recipient.
    State = 2,
    /// All recipients of a message cancelled.
    Cancel = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Message),
            2 => Some(Kind::State),
            3 => Some(Kind::Cancel),
            _ => None,
        }
    }
}

/// Rounds `n` up to the record alignment.
pub fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

fn salted(salt: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), bytes)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's id (also its file name).
    pub id: u32,
    /// The checksum salt of the segment's records.
    pub salt: u64,
    /// The message id counter when the segment was created (keeps ids monotonic when all older
    /// segments are gone).
    pub next_message_id: u64,
}

impl SegmentHeader {
    /// The 80-byte encoded header (two copies).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut one = [0u8; SEGMENT_HEADER_COPY];
        one[..8].copy_from_slice(SEGMENT_MAGIC);
        one[8..12].copy_from_slice(&self.id.to_le_bytes());
        one[12..14].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        one[16..24].copy_from_slice(&self.salt.to_le_bytes());
        one[24..32].copy_from_slice(&self.next_message_id.to_le_bytes());
        let crc = crc32c::crc32c(&one[..36]);
        one[36..40].copy_from_slice(&crc.to_le_bytes());
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[..SEGMENT_HEADER_COPY].copy_from_slice(&one);
        out[SEGMENT_HEADER_COPY..].copy_from_slice(&one);
        out
    }

    fn decode_copy(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        if b.len() < SEGMENT_HEADER_COPY {
            return Err(FormatError::Short);
        }
        if &b[..8] != SEGMENT_MAGIC {
            return Err(FormatError::Magic);
        }
        if crc32c::crc32c(&b[..36]) != u32_at(b, 36) {
            return Err(FormatError::Checksum);
        }
        if u16_at(b, 12) != FORMAT_VERSION || u16_at(b, 14) != 0 || u32_at(b, 32) != 0 {
            return Err(FormatError::Unknown);
        }
        Ok(SegmentHeader {
            id: u32_at(b, 8),
            salt: u64_at(b, 16),
            next_message_id: u64_at(b, 24),
        })
    }

    /// Decodes the header from the start of a segment, using the second copy if the first is damaged.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        match SegmentHeader::decode_copy(b) {
            Ok(h) => Ok(h),
            Err(e) => SegmentHeader::decode_copy(b.get(SEGMENT_HEADER_COPY..).unwrap_or(&[]))
                .map_err(|_| e),
        }
    }
}

/// A record framed in a segment, borrowed from the segment bytes.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// What the payload holds.
    pub kind: Kind,
    /// The payload.
    pub payload: &'a [u8],
    /// Bytes the record occupies including header and padding.
    pub span: usize,
}

/// Validates the record header at `off` (magic, header checksum, reserved fields, bounds) without
/// hashing the payload. Returns the kind and payload length.
pub fn check_header(seg: &[u8], off: usize, salt: u64) -> Result<(Kind, usize), FormatError> {
    let h = seg
        .get(off..)
        .and_then(|r| r.get(..RECORD_HEADER_LEN))
        .ok_or(FormatError::Short)?;
    if u32_at(h, 0) != RECORD_MAGIC {
        return Err(FormatError::Magic);
    }
    if salted(salt, &h[..16]) != u32_at(h, 16) {
        return Err(FormatError::Checksum);
    }
    let len = u32_at(h, 4) as usize;
    let kind = Kind::from_u8(h[8]).ok_or(FormatError::Unknown)?;
    if h[9] != 0 || u16_at(h, 10) != 0 || u32_at(h, 20) != 0 {
        return Err(FormatError::Unknown);
    }
    if len > MAX_PAYLOAD {
        return Err(FormatError::Length);
    }
    Ok((kind, len))
}

/// Decodes a record already verified in full (written by this spool, or checked at recovery): the
/// header is checked (magic, checksum, bounds), the payload is not hashed again. Reading a message
/// for each transaction would otherwise hash its whole body every time.
pub fn decode_verified_record(
    seg: &[u8],
    off: usize,
    salt: u64,
) -> Result<RecordRef<'_>, FormatError> {
    let (kind, len) = check_header(seg, off, salt)?;
    let start = off + RECORD_HEADER_LEN;
    let payload = seg.get(start..start + len).ok_or(FormatError::Short)?;
    Ok(RecordRef {
        kind,
        payload,
        span: align_up(RECORD_HEADER_LEN + len),
    })
}

/// Decodes and fully verifies the record at `off` of `seg`.
pub fn decode_record(seg: &[u8], off: usize, salt: u64) -> Result<RecordRef<'_>, FormatError> {
    let (kind, len) = check_header(seg, off, salt)?;
    let start = off + RECORD_HEADER_LEN;
    let payload = seg.get(start..start + len).ok_or(FormatError::Short)?;
    if salted(salt, payload) != u32_at(seg, off + 12) {
        return Err(FormatError::Checksum);
    }
    Ok(RecordRef {
        kind,
        payload,
        span: align_up(RECORD_HEADER_LEN + len),
    })
}

/// Appends a framed record of `kind` whose payload is written by `payload` to `out`.
pub fn encode_record(out: &mut Vec<u8>, salt: u64, kind: Kind, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    encode_unsealed(out, kind, payload);
    reseal(&mut out[start..], salt);
}

/// [`encode_record`] without the checksums (left zero): for a record whose segment, hence salt,
/// is chosen later, which must [`reseal`] it before it is written.
pub fn encode_unsealed(out: &mut Vec<u8>, kind: Kind, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    payload(out);
    let len = out.len() - start - RECORD_HEADER_LEN;
    out[start..start + 4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 8] = kind as u8;
    out.resize(start + align_up(len + RECORD_HEADER_LEN), 0);
}

/// Recomputes both checksums of the framed record at the start of `rec` for `salt` (a record moves to
/// another segment, which has another salt). The length field must be right.
pub fn reseal(rec: &mut [u8], salt: u64) {
    let len = u32_at(rec, 4) as usize;
    let pcrc = salted(salt, &rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]);
    rec[12..16].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = salted(salt, &rec[..16]);
    rec[16..20].copy_from_slice(&hcrc.to_le_bytes());
}

/// What scanning one segment found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// End of the last valid record: where appending would continue.
    pub end: usize,
    /// Damaged stretches skipped between valid records.
    pub corrupt_records: u64,
    /// Bytes in those stretches.
    pub corrupt_bytes: u64,
    /// Non-zero bytes after the last valid record (a torn tail), cut by a writable open.
    pub torn_bytes: u64,
}

fn all_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Scans the records of a segment (`seg` is the whole file, header included), calling `visit` with the
/// offset of every valid record in order.
///
/// A record that fails validation is never trusted, not even its length: the scan looks for the next
/// offset (on the 8-byte grid) that holds a fully valid record. If there is one, the damaged stretch
/// is counted and skipped. If there is none, the rest is the tail: all zero bytes (the unused part of
/// a pre-allocated segment) is a clean end, anything else is a torn tail. Work is linear in the
/// segment size plus the payload bytes of candidates whose salted header checksum matched.
pub fn scan(seg: &[u8], salt: u64, mut visit: impl FnMut(usize, RecordRef<'_>)) -> Scan {
    let mut out = Scan {
        end: SEGMENT_HEADER_LEN.min(seg.len()),
        ..Scan::default()
    };
    let mut off = SEGMENT_HEADER_LEN;
    while off < seg.len() {
        match decode_record(seg, off, salt) {
            Ok(rec) if off + rec.span <= seg.len() => {
                visit(off, rec);
                off += rec.span;
                out.end = off;
                continue;
            }
            _ => {}
        }
        let rest = &seg[off..];
        if all_zero(rest) {
            break;
        }
        let mut q = off + RECORD_ALIGN;
        let mut found = None;
        while q + RECORD_HEADER_LEN <= seg.len() {
            if u32_at(seg, q) == RECORD_MAGIC
                && check_header(seg, q, salt).is_ok()
                && matches!(decode_record(seg, q, salt), Ok(r) if q + r.span <= seg.len())
            {
                found = Some(q);
                break;
            }
            q += RECORD_ALIGN;
        }
        match found {
            Some(q) => {
                out.corrupt_records += 1;
                out.corrupt_bytes += (q - off) as u64;
                off = q;
            }
            None => {
                let last = rest.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                out.torn_bytes = last as u64;
                break;
            }
        }
    }
    out
}

/// A bounds-checked little-endian reader: every read returns [`FormatError`] instead of panicking.
#[derive(Debug, Clone)]
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError::Length)?;
        let s = self.b.get(self.at..end).ok_or(FormatError::Length)?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16_at(self.take(2)?, 0))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64_at(self.take(8)?, 0))
    }
    fn text(&mut self, max: usize) -> Result<&'a str, FormatError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(FormatError::Length);
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| FormatError::Utf8)
    }
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Cuts `s` to at most `max` bytes at a char boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The per-recipient part of a message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientRecord<'a> {
    /// The address (`local@domain`).
    pub address: &'a str,
    /// The state when the record was written.
    pub state: RecipientState,
    /// Delivery attempts made so far.
    pub attempts: u16,
    /// Unix time (seconds) of the next attempt; 0 for "as soon as possible".
    pub next_attempt: u64,
    /// Summary of the last reply, empty if none.
    pub reply: &'a str,
}

/// The fields of a message record other than recipients and body, for encoding.
#[derive(Debug, Clone, Copy)]
pub struct MessageHead<'a> {
    /// The message id.
    pub id: u64,
    /// Unix time (seconds) of submission.
    pub submitted_at: u64,
    /// Priority.
    pub priority: Priority,
    /// Flags.
    pub flags: MessageFlags,
    /// The envelope sender (may be empty: the null reverse-path).
    pub sender: &'a str,
    /// The tenant (account) the message belongs to.
    pub tenant: &'a str,
    /// Metadata tags.
    pub tags: &'a [(&'a str, &'a str)],
}

/// Encodes a message payload. Lengths must already be within the hard limits (the caller validates).
pub fn encode_message<'a>(
    out: &mut Vec<u8>,
    head: &MessageHead<'_>,
    rcpt_count: usize,
    recipients: impl Iterator<Item = RecipientRecord<'a>>,
    body: &[u8],
) {
    out.extend_from_slice(&head.id.to_le_bytes());
    out.extend_from_slice(&head.submitted_at.to_le_bytes());
    out.push(head.priority as u8);
    out.push(head.flags.0);
    out.extend_from_slice(&(rcpt_count as u16).to_le_bytes());
    put_text(out, head.sender);
    put_text(out, head.tenant);
    out.extend_from_slice(&(head.tags.len() as u16).to_le_bytes());
    for (k, v) in head.tags {
        put_text(out, k);
        put_text(out, v);
    }
    for r in recipients {
        out.push(r.state as u8);
        out.push(0);
        out.extend_from_slice(&r.attempts.to_le_bytes());
        out.extend_from_slice(&r.next_attempt.to_le_bytes());
        put_text(out, r.address);
        put_text(out, cut(r.reply, MAX_REPLY));
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// A decoded message payload, borrowing the segment bytes (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct MessageRecord<'a> {
    /// The message id.
    pub id: u64,
    /// Unix time (seconds) of submission.
    pub submitted_at: u64,
    /// Priority.
    pub priority: Priority,
    /// Flags.
    pub flags: MessageFlags,
    /// Number of recipients.
    pub rcpt_count: u16,
    /// The envelope sender.
    pub sender: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    tags: &'a [u8],
    tag_count: u16,
    rcpts: &'a [u8],
    /// The message body (the RFC 5322 message as submitted).
    pub body: &'a [u8],
}

impl<'a> MessageRecord<'a> {
    /// Decodes and validates a whole message payload (every length, every text field, every state).
    pub fn decode(p: &'a [u8]) -> Result<MessageRecord<'a>, FormatError> {
        let mut r = Reader { b: p, at: 0 };
        let id = r.u64()?;
        let submitted_at = r.u64()?;
        let priority = Priority::from_u8(r.u8()?).ok_or(FormatError::Value)?;
        let flags = MessageFlags(r.u8()?);
        let rcpt_count = r.u16()?;
        if rcpt_count == 0 {
            return Err(FormatError::Value);
        }
        let sender = r.text(MAX_FIELD)?;
        let tenant = r.text(MAX_FIELD)?;
        let tag_count = r.u16()?;
        if usize::from(tag_count) > MAX_TAGS {
            return Err(FormatError::Length);
        }
        let tags_start = r.at;
        for _ in 0..tag_count {
            r.text(MAX_FIELD)?;
            r.text(MAX_FIELD)?;
        }
        let tags = &p[tags_start..r.at];
        let rcpts_start = r.at;
        for _ in 0..rcpt_count {
            decode_rcpt(&mut r)?;
        }
        let rcpts = &p[rcpts_start..r.at];
        let body_len = r.u32()? as usize;
        let body = r.take(body_len)?;
        if r.at != p.len() {
            return Err(FormatError::Length);
        }
        Ok(MessageRecord {
            id,
            submitted_at,
            priority,
            flags,
            rcpt_count,
            sender,
            tenant,
            tags,
            tag_count,
            rcpts,
            body,
        })
    }

    /// The metadata tags.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let mut r = Reader {
            b: self.tags,
            at: 0,
        };
        (0..self.tag_count)
            .map_while(move |_| Some((r.text(MAX_FIELD).ok()?, r.text(MAX_FIELD).ok()?)))
    }

    /// The recipients with the state they had when the record was written.
    pub fn recipients(&self) -> impl Iterator<Item = RecipientRecord<'a>> + use<'a> {
        let mut r = Reader {
            b: self.rcpts,
            at: 0,
        };
        (0..self.rcpt_count).map_while(move |_| decode_rcpt(&mut r).ok())
    }

    /// Recipient `i`, or `None` if out of range.
    pub fn recipient(&self, i: u16) -> Option<RecipientRecord<'a>> {
        self.recipients().nth(usize::from(i))
    }
}

fn decode_rcpt<'a>(r: &mut Reader<'a>) -> Result<RecipientRecord<'a>, FormatError> {
    let state = RecipientState::from_u8(r.u8()?).ok_or(FormatError::Value)?;
    if r.u8()? != 0 {
        return Err(FormatError::Unknown);
    }
    let attempts = r.u16()?;
    let next_attempt = r.u64()?;
    let address = r.text(MAX_FIELD)?;
    let reply = r.text(MAX_REPLY)?;
    Ok(RecipientRecord {
        address,
        state,
        attempts,
        next_attempt,
        reply,
    })
}

/// A state change of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRecord<'a> {
    /// The message id.
    pub id: u64,
    /// Index of the recipient within the message.
    pub rcpt: u16,
    /// The new state.
    pub state: RecipientState,
    /// Attempts made so far.
    pub attempts: u16,
    /// Unix time (seconds) of the next attempt.
    pub next_attempt: u64,
    /// Summary of the last reply (at most [`MAX_REPLY`] bytes).
    pub reply: &'a str,
}

impl<'a> StateRecord<'a> {
    /// Encodes the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.rcpt.to_le_bytes());
        out.push(self.state as u8);
        out.push(0);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.extend_from_slice(&self.next_attempt.to_le_bytes());
        put_text(out, cut(self.reply, MAX_REPLY));
    }

    /// Decodes and validates the payload.
    pub fn decode(p: &'a [u8]) -> Result<StateRecord<'a>, FormatError> {
        let mut r = Reader { b: p, at: 0 };
        let id = r.u64()?;
        let rcpt = r.u16()?;
        let state = RecipientState::from_u8(r.u8()?).ok_or(FormatError::Value)?;
        if r.u8()? != 0 {
            return Err(FormatError::Unknown);
        }
        let attempts = r.u16()?;
        let next_attempt = r.u64()?;
        let reply = r.text(MAX_REPLY)?;
        if r.at != p.len() {
            return Err(FormatError::Length);
        }
        Ok(StateRecord {
            id,
            rcpt,
            state,
            attempts,
            next_attempt,
            reply,
        })
    }
}

/// Encodes a cancel payload.
pub fn encode_cancel(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(&id.to_le_bytes());
}

/// Decodes a cancel payload (the message id).
pub fn decode_cancel(p: &[u8]) -> Result<u64, FormatError> {
    if p.len() != 8 {
        return Err(FormatError::Length);
    }
    Ok(u64_at(p, 0))
}

/// Reads the message id of a message payload without decoding the rest.
pub fn peek_message_id(p: &[u8]) -> Result<u64, FormatError> {
    Reader { b: p, at: 0 }.u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(out: &mut Vec<u8>, salt: u64) {
        let head = MessageHead {
            id: 7,
            submitted_at: 1_700_000_000,
            priority: Priority::Bulk,
            flags: MessageFlags::EIGHT_BIT | MessageFlags::SMTPUTF8,
            sender: "bounce@example.org",
            tenant: "acme",
            tags: &[("campaign", "c1"), ("k", "")],
        };
        let rcpts = [
            RecipientRecord {
                address: "a@example.com",
                state: RecipientState::Queued,
                attempts: 0,
                next_attempt: 0,
                reply: "",
            },
            RecipientRecord {
                address: "b@exämple.net",
                state: RecipientState::Deferred,
                attempts: 2,
                next_attempt: 1_700_000_600,
                reply: "451 4.7.1 try later",
            },
        ];
        encode_record(out, salt, Kind::Message, |o| {
            encode_message(
                o,
                &head,
                rcpts.len(),
                rcpts.iter().copied(),
                b"Subject: x\r\n\r\nhi\r\n",
            )
        });
    }

    #[test]
    fn message_round_trip() {
        let mut buf = Vec::new();
        sample(&mut buf, 42);
        assert_eq!(buf.len() % RECORD_ALIGN, 0);
        let rec = decode_record(&buf, 0, 42).unwrap();
        assert_eq!(rec.kind, Kind::Message);
        assert_eq!(rec.span, buf.len());
        let m = MessageRecord::decode(rec.payload).unwrap();
        assert_eq!(m.id, 7);
        assert_eq!(m.priority, Priority::Bulk);
        assert!(m.flags.contains(MessageFlags::SMTPUTF8));
        assert_eq!(m.sender, "bounce@example.org");
        assert_eq!(m.tenant, "acme");
        assert_eq!(
            m.tags().collect::<Vec<_>>(),
            vec![("campaign", "c1"), ("k", "")]
        );
        let r: Vec<_> = m.recipients().collect();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].address, "b@exämple.net");
        assert_eq!(r[1].state, RecipientState::Deferred);
        assert_eq!(r[1].reply, "451 4.7.1 try later");
        assert_eq!(m.body, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(peek_message_id(rec.payload).unwrap(), 7);
    }

    #[test]
    fn wrong_salt_fails() {
        let mut buf = Vec::new();
        sample(&mut buf, 42);
        assert_eq!(
            decode_record(&buf, 0, 43).unwrap_err(),
            FormatError::Checksum
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        sample(&mut buf, 9);
        let used = RECORD_HEADER_LEN + u32_at(&buf, 4) as usize;
        for i in 0..used {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode_record(&b, 0, 9).is_err(),
                    "flip at {i}:{bit} accepted"
                );
            }
        }
    }

    #[test]
    fn payload_decoders_never_panic_on_truncation() {
        let mut buf = Vec::new();
        sample(&mut buf, 1);
        let rec = decode_record(&buf, 0, 1).unwrap();
        for n in 0..rec.payload.len() {
            assert!(MessageRecord::decode(&rec.payload[..n]).is_err());
        }
        let s = StateRecord {
            id: 1,
            rcpt: 3,
            state: RecipientState::Bounced,
            attempts: 4,
            next_attempt: 5,
            reply: "550 5.1.1 no such user",
        };
        let mut p = Vec::new();
        s.encode(&mut p);
        assert_eq!(StateRecord::decode(&p).unwrap(), s);
        for n in 0..p.len() {
            assert!(StateRecord::decode(&p[..n]).is_err());
        }
    }

    #[test]
    fn segment_header_survives_one_damaged_copy() {
        let h = SegmentHeader {
            id: 3,
            salt: 0xdead_beef,
            next_message_id: 99,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        b[5] ^= 0xff;
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        b[45] ^= 0xff;
        assert!(SegmentHeader::decode(&b).is_err());
    }

    #[test]
    fn reply_is_cut_at_char_boundary() {
        let long = "é".repeat(400);
        let c = cut(&long, MAX_REPLY);
        assert!(c.len() <= MAX_REPLY && c.len() >= MAX_REPLY - 1);
    }
}
