//! Crash test of the spool: a child process (this test executable re-invoked with an environment
//! variable) submits messages and records state changes from four threads under `SyncPolicy::Sync`,
//! printing each attempt before it starts and each acknowledgement after `commit` returned. The parent
//! kills it with SIGKILL at a random moment (including during recovery), reads everything the child
//! printed, reopens the spool and checks:
//!
//! - every acknowledged message is there with its envelope and body, and every acknowledged state
//!   change is there (or a later one the child had started);
//! - nothing is there that the child never started to write (no invented or garbled messages), and no
//!   state appears that was neither acknowledged nor attempted;
//! - a message whose recipients were all acknowledged final (or whose removal was acknowledged) is
//!   gone, and stays gone;
//! - the spool opens cleanly (no corrupt records, no damaged segments).
//!
//! Run with `cargo test -p vmta-tests --test spool_crash`. The seed is printed; set `SPOOL_CRASH_SEED`
//! to replay one and `SPOOL_CRASH_ROUNDS` to change the number of kills (default 60).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmta::spool::{
    Envelope, MessageId, Options, Priority, RecipientId, RecipientState, Spool, SpoolError,
    StateChange, SyncPolicy,
};
use vmta_tests::TempDir;

const CHILD_DIR: &str = "VMTA_SPOOL_CRASH_DIR";
const CHILD_RUN: &str = "VMTA_SPOOL_CRASH_RUN";

fn options() -> Options {
    Options {
        policy: SyncPolicy::Sync,
        segment_size: 96 << 10,
        ..Options::default()
    }
}

/// The body of the message tagged `tag`: deterministic, 200 bytes to 6 KiB.
fn body_for(tag: &str) -> Vec<u8> {
    let h = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let len = 200 + (h % 6000) as usize;
    let mut b = format!("Subject: {tag}\r\nX-Hash: {h:x}\r\n\r\n").into_bytes();
    while b.len() < len {
        b.extend_from_slice(tag.as_bytes());
        b.extend_from_slice(b" \r\n");
    }
    b.truncate(len);
    b
}

fn rcpt_count_for(n: u64) -> usize {
    1 + (n % 3) as usize
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn state_name(s: RecipientState) -> &'static str {
    s.as_str()
}

fn state_from(name: &str) -> RecipientState {
    RecipientState::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .unwrap_or_else(|| panic!("unknown state {name}"))
}

// ---------------------------------------------------------------------------------------------------
// The child.

struct Out(Mutex<std::io::Stdout>);
impl Out {
    fn line(&self, s: &str) {
        let mut o = self.0.lock().unwrap_or_else(|e| e.into_inner());
        o.write_all(format!("{s}\n").as_bytes()).expect("stdout");
        o.flush().expect("stdout");
    }
}

/// Moves a recipient one step: deferred (attempts + 1), then sometimes delivered or bounced.
fn next_change(rng: &mut Rng, attempts: u16) -> (RecipientState, u16) {
    match rng.below(10) {
        0..=4 => (RecipientState::Deferred, attempts + 1),
        5 => (RecipientState::Held, attempts),
        6..=7 => (RecipientState::Delivered, attempts + 1),
        _ => (RecipientState::Bounced, attempts + 1),
    }
}

fn change(
    spool: &Mutex<Spool>,
    out: &Out,
    rng: &mut Rng,
    rid: RecipientId,
    attempts: u16,
) -> (RecipientState, u16) {
    let (state, attempts) = next_change(rng, attempts);
    let reply = format!("{} attempt {attempts}", state_name(state));
    let c = StateChange {
        state,
        attempts,
        next_attempt: 1_800_000_000 + u64::from(attempts),
        reply: &reply,
    };
    out.line(&format!(
        "TRYST {} {} {} {attempts}",
        rid.message,
        rid.index,
        state_name(state)
    ));
    let (ticket, dur) = {
        let mut s = spool.lock().unwrap();
        let t = s.record_state(rid, &c).expect("record state");
        (t, s.durability())
    };
    dur.wait(ticket).expect("commit state");
    out.line(&format!(
        "ST {} {} {} {attempts}",
        rid.message,
        rid.index,
        state_name(state)
    ));
    (state, attempts)
}

fn child(dir: &Path, run: u64) {
    let out = Arc::new(Out(Mutex::new(std::io::stdout())));
    out.line("OPENING");
    let (spool, _) = Spool::open(dir, options()).expect("child open");
    let recovered: Vec<(RecipientId, u16)> = spool.queued().map(|q| (q.id, q.attempts)).collect();
    out.line("READY");
    let spool = Arc::new(Mutex::new(spool));
    let started = Instant::now();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let spool = spool.clone();
            let out = out.clone();
            let recovered = if t == 0 {
                recovered.clone()
            } else {
                Vec::new()
            };
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (run << 8) ^ t);
                // Thread 0 first works on what the previous runs left.
                for (rid, attempts) in recovered {
                    if rng.below(2) == 0 {
                        change(&spool, &out, &mut rng, rid, attempts);
                    }
                }
                let mut n = 0u64;
                while started.elapsed() < Duration::from_secs(20) {
                    let tag = format!("r{run}t{t}n{n}");
                    let addrs: Vec<String> = (0..rcpt_count_for(n))
                        .map(|i| format!("u{i}@d{}.example", n % 7))
                        .collect();
                    let rcpts: Vec<&str> = addrs.iter().map(String::as_str).collect();
                    let env = Envelope {
                        sender: "bounce@crash.example",
                        recipients: &rcpts,
                        tenant: &tag,
                        priority: Priority::Transactional,
                        submitted_at: 1_700_000_000 + n,
                        ..Envelope::default()
                    };
                    let body = body_for(&tag);
                    out.line(&format!("TRY {tag}"));
                    let (id, ticket, dur) = {
                        let mut s = spool.lock().unwrap();
                        let (id, t) = s.append(&env, &body).expect("append");
                        (id, t, s.durability())
                    };
                    dur.wait(ticket).expect("commit");
                    out.line(&format!("MSG {tag} {id}"));
                    match rng.below(4) {
                        0 => {}
                        1 => {
                            out.line(&format!("TRYRM {id}"));
                            let t = spool.lock().unwrap().remove(id).expect("remove");
                            dur.wait(t).expect("commit remove");
                            out.line(&format!("RM {id}"));
                        }
                        _ => {
                            for i in 0..rcpts.len() as u16 {
                                let rid = RecipientId {
                                    message: id,
                                    index: i,
                                };
                                let mut attempts = 0;
                                for _ in 0..rng.below(3) {
                                    let (state, a) = change(&spool, &out, &mut rng, rid, attempts);
                                    attempts = a;
                                    if state.is_final() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    if t == 0 && n % 16 == 15 {
                        spool.lock().unwrap().maintain().expect("maintain");
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("child thread");
    }
}

// ---------------------------------------------------------------------------------------------------
// The parent's model of what was acknowledged and attempted.

#[derive(Debug, Clone, Default)]
struct Rcpt {
    /// The last acknowledged (state, attempts), or the state found at the last verification.
    acked: Option<(RecipientState, u16)>,
    /// Changes attempted after it, in order.
    tried: Vec<(RecipientState, u16)>,
}

#[derive(Debug, Clone)]
struct Msg {
    id: Option<MessageId>,
    acked: bool,
    rcpts: Vec<Rcpt>,
    remove_tried: bool,
    remove_acked: bool,
    gone: bool,
}

#[derive(Debug, Default)]
struct Model {
    msgs: HashMap<String, Msg>,
    by_id: HashMap<MessageId, String>,
    acks: u64,
    state_acks: u64,
}

impl Model {
    fn feed(&mut self, line: &str) {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["TRY", tag] => {
                let n: u64 = tag.rsplit('n').next().unwrap().parse().unwrap();
                self.msgs.insert(
                    tag.to_string(),
                    Msg {
                        id: None,
                        acked: false,
                        rcpts: vec![Rcpt::default(); rcpt_count_for(n)],
                        remove_tried: false,
                        remove_acked: false,
                        gone: false,
                    },
                );
            }
            ["MSG", tag, id] => {
                let id: MessageId = id.parse().unwrap();
                let m = self.msgs.get_mut(*tag).expect("MSG without TRY");
                m.id = Some(id);
                m.acked = true;
                for r in &mut m.rcpts {
                    r.acked = Some((RecipientState::Queued, 0));
                }
                self.by_id.insert(id, tag.to_string());
                self.acks += 1;
            }
            ["TRYST", id, i, st, a] | ["ST", id, i, st, a] => {
                let id: MessageId = id.parse().unwrap();
                let tag = self
                    .by_id
                    .get(&id)
                    .unwrap_or_else(|| panic!("state for unknown {id}"));
                let m = self.msgs.get_mut(tag).unwrap();
                let r = &mut m.rcpts[i.parse::<usize>().unwrap()];
                let c = (state_from(st), a.parse().unwrap());
                if f[0] == "TRYST" {
                    r.tried.push(c);
                } else {
                    assert_eq!(r.tried.first(), Some(&c), "ack of a change not tried first");
                    r.tried.remove(0);
                    r.acked = Some(c);
                    self.state_acks += 1;
                }
            }
            ["TRYRM", id] | ["RM", id] => {
                let id: MessageId = id.parse().unwrap();
                let tag = self.by_id[&id].clone();
                let m = self.msgs.get_mut(&tag).unwrap();
                if f[0] == "TRYRM" {
                    m.remove_tried = true;
                } else {
                    m.remove_acked = true;
                }
            }
            ["OPENING"] | ["READY"] => {}
            _ => {} // test harness chatter, or a line cut by the kill
        }
    }

    /// Checks the reopened spool against the model, then makes the spool's content the new baseline.
    fn verify(&mut self, spool: &Spool, round: usize) {
        let mut present: HashMap<String, MessageId> = HashMap::new();
        for id in spool.messages() {
            let m = spool.message(id).unwrap();
            let tag = m.tenant().to_string();
            let model = self.msgs.get(&tag).unwrap_or_else(|| {
                panic!("round {round}: message {id} ({tag:?}) was never submitted")
            });
            assert_eq!(
                m.body(),
                &body_for(&tag)[..],
                "round {round}: body of {tag} differs"
            );
            assert_eq!(
                usize::from(m.recipient_count()),
                model.rcpts.len(),
                "round {round}: {tag}"
            );
            if let Some(known) = model.id {
                assert_eq!(known, id, "round {round}: {tag} changed id");
            }
            assert!(
                !model.gone,
                "round {round}: {tag} came back after it was finished"
            );
            assert!(
                !model.remove_acked,
                "round {round}: removed {tag} came back"
            );
            present.insert(tag, id);
        }
        for (tag, m) in self.msgs.iter_mut() {
            if m.gone {
                continue;
            }
            match present.get(tag) {
                Some(&id) => {
                    for (i, r) in m.rcpts.iter_mut().enumerate() {
                        let rid = RecipientId {
                            message: id,
                            index: i as u16,
                        };
                        let v = spool.recipient(rid).unwrap();
                        let got = (v.state, v.attempts);
                        let base = r.acked.unwrap_or((RecipientState::Queued, 0));
                        if got != base && !r.tried.contains(&got) {
                            panic!(
                                "round {round}: {tag} recipient {i} is {got:?}; acknowledged {:?}, tried {:?}",
                                r.acked, r.tried
                            );
                        }
                        if got.0 != RecipientState::Queued {
                            assert_eq!(
                                v.last_reply,
                                format!("{} attempt {}", got.0.as_str(), got.1),
                                "round {round}: reply of {tag}.{i}"
                            );
                        }
                        r.acked = Some(got);
                        r.tried.clear();
                    }
                    m.id = Some(id);
                    m.acked = true;
                    m.remove_tried = false;
                    self.by_id.insert(id, tag.clone());
                }
                None if m.acked => {
                    // Gone: allowed only if every recipient is acknowledged final or was being moved to
                    // a final state, or a removal was at least attempted.
                    let explained = m.remove_tried
                        || m.remove_acked
                        || m.rcpts.iter().all(|r| {
                            r.acked.is_some_and(|a| a.0.is_final())
                                || r.tried.iter().any(|t| t.0.is_final())
                        });
                    assert!(
                        explained,
                        "round {round}: acknowledged message {tag} ({:?}) was lost: {m:?}",
                        m.id
                    );
                    m.gone = true;
                }
                None => m.gone = true, // attempted, never acknowledged, not written: fine
            }
        }
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let run = std::env::var(CHILD_RUN).unwrap().parse().unwrap();
        child(Path::new(&dir), run);
        return;
    }
    let rounds: usize = std::env::var("SPOOL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SPOOL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("spool crash test: seed {seed}, {rounds} rounds (SPOOL_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let dir = TempDir::new("spool-crash");
    let exe = std::env::current_exe().unwrap();
    let mut model = Model::default();
    let mut truncated = 0;
    let mut during_recovery = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "acknowledged_records_survive_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_RUN, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut buf = String::new();
            while r.read_line(&mut buf).unwrap_or(0) > 0 {
                if buf.ends_with('\n') {
                    lines.push(buf.trim_end().to_string());
                }
                buf.clear();
            }
            lines
        });
        // Kill at a random moment: mostly while submitting, sometimes during open and recovery.
        let delay = if rng.below(8) == 0 {
            rng.below(15)
        } else {
            20 + rng.below(250)
        };
        std::thread::sleep(Duration::from_millis(delay));
        // SAFETY: kill(2) takes two integers and touches no memory of ours; the pid is our unreaped
        // child, so it cannot have been reused by another process.
        let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(r, 0, "kill child");
        let status = child.wait().unwrap();
        assert!(!status.success(), "child finished before the kill");
        let lines = reader.join().unwrap();
        if !lines.iter().any(|l| l == "READY") {
            during_recovery += 1;
        }
        for l in &lines {
            model.feed(l);
        }
        let (spool, rep) = match Spool::open(dir.path(), options()) {
            Ok(x) => x,
            Err(SpoolError::Locked { .. }) => {
                panic!("round {round}: lock still held after the child died")
            }
            Err(e) => panic!("round {round}: reopen failed: {e}"),
        };
        assert_eq!(rep.corrupt_records, 0, "round {round}: {rep:?}");
        assert_eq!(rep.damaged_segments, 0, "round {round}: {rep:?}");
        truncated += rep.truncated_bytes;
        model.verify(&spool, round);
    }
    eprintln!(
        "spool crash test: {rounds} kills ({during_recovery} before recovery finished), {} messages and {} state \
         changes acknowledged, {truncated} torn bytes cut",
        model.acks, model.state_acks
    );
    assert!(
        model.acks > rounds as u64,
        "too few acknowledgements to mean anything: {}",
        model.acks
    );
    assert!(model.state_acks > 0);
}
