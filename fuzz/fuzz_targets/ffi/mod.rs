//! Random sequences of C ABI calls, shared by two targets: `ffi_calls` (configurations, errors,
//! buffers, classification, suppression lists, VERP and reports, with every engine call made on
//! handles that are not engines) and `ffi_engine` (the same with engines started, used and shut down:
//! submit, poll, wait, flush, cancel, stats, shutdown, free). Handles are live, freed already, of the
//! wrong type or plain garbage. Every call must return a defined result code (never crash, hang or
//! read out of bounds), and what it hands out must be readable.
//!
//! The two are apart for speed: an engine's threads run code of their own during every input, which
//! multiplies libFuzzer's coverage bookkeeping and the leak check after each input (`ffi_engine` runs
//! about 150 inputs a second, the rest about 2,000).
//!
//! The ffi crate is built only as cdylib and staticlib (its library name, `vmta`, is the core
//! crate's), so it cannot be a Rust dependency of this crate. Its source is compiled here as a module
//! instead (its modules refer to each other with `super::`, never `crate::`), and the exported
//! `extern "C"` functions are called directly, exactly as C calls them.
//!
//! Engines deliver nowhere: before each start the target forces one shard, no fsync, a spool under
//! a temporary directory, no event log, a small submission ring (the engine does not bound
//! `submission_queue`: a huge value aborts on allocation) and a smarthost on 127.0.70.254:9
//! (nothing listens there).

#[path = "../../../ffi/src/lib.rs"]
#[allow(dead_code, unused_imports)]
mod vmta_ffi;

use crate::common;
use std::ffi::CStr;
use std::ptr::{null, null_mut};
use vmta_ffi::bounce::*;
use vmta_ffi::buffer::*;
use vmta_ffi::config::*;
use vmta_ffi::engine::*;
use vmta_ffi::error::*;
use vmta_ffi::result::*;

/// The highest result code defined.
const MAX_RESULT: vmta_result = VMTA_TIMEOUT;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self) -> &'a [u8] {
        let n = (self.byte() as usize).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn ok(r: vmta_result) -> vmta_result {
    assert!(r <= MAX_RESULT, "undefined result code {r}");
    // SAFETY: vmta_result_str returns a static NUL-terminated string for any number.
    let name = unsafe { CStr::from_ptr(vmta_result_str(r)) };
    assert!(!name.to_bytes().is_empty());
    r
}

fn s(b: &[u8]) -> vmta_str {
    vmta_str {
        ptr: b.as_ptr(),
        len: b.len(),
    }
}

fn read(v: vmta_str) {
    if v.len > 0 {
        // SAFETY: views handed out by vmta are valid for their length until the next call on the
        // same object; this reads them at once.
        let b = unsafe { std::slice::from_raw_parts(v.ptr, v.len) };
        std::hint::black_box(b.iter().fold(0u8, |a, x| a ^ x));
    }
}

/// Handles made in this run (freed or not), plus garbage values to pass around.
#[derive(Default)]
struct Pool {
    configs: Vec<usize>,
    engines: Vec<usize>,
    errors: Vec<usize>,
    buffers: Vec<usize>,
    stores: Vec<usize>,
    verps: Vec<usize>,
    lists: Vec<usize>,
    reports: Vec<usize>,
    ids: Vec<u64>,
    engines_started: usize,
    /// May an input start an engine (`ffi_engine`)?
    engines_allowed: bool,
}

fn v16(i: &mut Input<'_>) -> u32 {
    u32::from(i.byte()) | u32::from(i.byte()) << 8
}

fn pick(v: &[usize], i: &mut Input<'_>) -> usize {
    let k = i.byte() as usize;
    if v.is_empty() || k % 8 == 7 {
        // NULL, a small integer, or an odd address: never a live handle.
        return [0, 1, 0x1000, 0xdead_beef, usize::MAX][k % 5];
    }
    v[k % v.len()]
}

fn scratch() -> std::path::PathBuf {
    common::scratch_dir("vmta-fuzz-ffi")
}

/// Forces the settings that keep an engine on this machine and cheap; false if `c` is not a live
/// configuration.
///
/// # Safety
/// None beyond the ABI's: any handle value may be passed.
unsafe fn confine(c: *mut vmta_config, spool: &std::path::Path, queue: u32) -> bool {
    let spool = spool.to_string_lossy().into_owned();
    let relay = "127.0.70.254:9";
    // SAFETY: the strings are locals valid for their lengths.
    unsafe {
        vmta_config_set_spool_dir(c, spool.as_ptr(), spool.len()) == VMTA_OK
            && vmta_config_set_smarthost(c, relay.as_ptr(), relay.len(), VMTA_TLS_DISABLED) == VMTA_OK
            && vmta_config_set_event_log(c, null(), 0) == VMTA_OK
            && vmta_config_set_shards(c, 1) == VMTA_OK
            && vmta_config_set_pin_shards(c, false) == VMTA_OK
            && vmta_config_set_durability(c, VMTA_DURABILITY_NONE) == VMTA_OK
            && vmta_config_set_spool_segment_mb(c, 1) == VMTA_OK
            && vmta_config_set_submission_queue(c, queue) == VMTA_OK
            // The classified retry policy compiles the bounce rules (a regex set) at every start,
            // which instrumented builds make slow; the exponential schedule does not.
            && vmta_config_set_retry(c, 60, 600, 3600) == VMTA_OK
    }
}

/// An engine kept from one input to the next (starting one costs tens of milliseconds), replaced
/// when an input has freed or shut it down.
fn shared_engine() -> usize {
    static SHARED: std::sync::Mutex<(usize, u32)> = std::sync::Mutex::new((0, 0));
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let e = shared.0 as *mut vmta_engine;
    let mut n = 0;
    let mut events: Vec<vmta_event> = Vec::with_capacity(64);
    // SAFETY: `events` has room for 64 events; `n` is a local.
    while unsafe { vmta_engine_poll_events(e, events.as_mut_ptr(), 64, &mut n) } == VMTA_OK && n > 0
    {
    }
    if shared.0 != 0
        && vmta_engine_wait(e, 0) != VMTA_SHUTTING_DOWN
        && vmta_engine_wait(e, 0) != VMTA_INVALID_HANDLE
    {
        return shared.0;
    }
    vmta_engine_free(e);
    shared.1 += 1;
    // Made once per process and left when it exits: on the temporary directory the fuzzing scripts
    // remove (not on /dev/shm, where nothing would).
    let dir = std::env::temp_dir().join(format!("vmta-fuzz-ffi-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = null_mut();
    let mut engine = null_mut();
    // SAFETY: locals as outputs.
    unsafe {
        assert_eq!(vmta_config_new(&mut c), VMTA_OK);
        assert!(confine(c, &dir, 64));
        assert_eq!(vmta_engine_new(c, &mut engine, null_mut()), VMTA_OK);
    }
    vmta_config_free(c);
    shared.0 = engine as usize;
    shared.0
}

fn err_slot(pool: &mut Pool, e: *mut vmta_error) {
    if !e.is_null() {
        pool.errors.push(e as usize);
    }
}

fn step(pool: &mut Pool, i: &mut Input<'_>) {
    let op = i.byte() % 24;
    // SAFETY (every unsafe call below): inputs are slices of the fuzz input or locals, valid for the
    // lengths passed; outputs are locals; handles may be anything, which is what is being tested.
    unsafe {
        match op {
            0 => {
                let mut c = null_mut();
                if ok(vmta_config_new(&mut c)) == VMTA_OK {
                    pool.configs.push(c as usize);
                }
            }
            1 => {
                let text = i.bytes();
                let (mut c, mut e) = (null_mut(), null_mut());
                if ok(vmta_config_from_toml(
                    text.as_ptr(),
                    text.len(),
                    &mut c,
                    &mut e,
                )) == VMTA_OK
                {
                    assert!(e.is_null());
                    pool.configs.push(c as usize);
                } else {
                    assert!(c.is_null(), "output written on failure");
                    err_slot(pool, e);
                }
            }
            2 => {
                let c = pick(&pool.configs, i) as *mut vmta_config;
                let v = i.u32();
                let b = i.bytes();
                ok(match i.byte() % 12 {
                    0 => vmta_config_set_shards(c, v % 4),
                    1 => vmta_config_set_durability(c, v % 4),
                    2 => vmta_config_set_port(c, v as u16),
                    3 => vmta_config_set_tls(c, v % 4),
                    4 => vmta_config_set_submission_queue(c, v % 8),
                    5 => vmta_config_set_helo_name(c, b.as_ptr(), b.len()),
                    6 => vmta_config_add_nameserver(c, b.as_ptr(), b.len()),
                    7 => vmta_config_set_retry(c, u64::from(v % 5), u64::from(v % 7), u64::from(v)),
                    8 => vmta_config_set_shaping_rules(c, b.as_ptr(), b.len()),
                    9 => vmta_config_set_max_connections_per_host(c, v % 3),
                    10 => vmta_config_set_pin_shards(c, v & 1 == 1),
                    _ => vmta_config_set_smarthost(c, b.as_ptr(), b.len(), v % 4),
                });
            }
            3 => {
                ok(vmta_config_free(pick(&pool.configs, i) as *mut vmta_config));
            }
            4 => {
                if pool.engines_started >= 1 {
                    return;
                }
                // Without engines, the configuration is never a live one: the start fails at once.
                let configs: &[usize] = if pool.engines_allowed {
                    &pool.configs
                } else {
                    &[]
                };
                let c = pick(configs, i) as *mut vmta_config;
                let spool = scratch().join(format!("spool-{}", pool.engines_started));
                let (mut e, mut err) = (null_mut(), null_mut());
                if !confine(c, &spool, 1 + v16(i) % 64) {
                    ok(vmta_engine_new(c, &mut e, &mut err));
                    assert!(e.is_null());
                    err_slot(pool, err);
                    return;
                }
                pool.engines_started += 1;
                if ok(vmta_engine_new(c, &mut e, &mut err)) == VMTA_OK {
                    pool.engines.push(e as usize);
                } else {
                    err_slot(pool, err);
                }
            }
            5 => {
                let e = pick(&pool.engines, i) as *const vmta_engine;
                let sender = i.bytes();
                let n = (i.byte() % 4) as usize;
                let rcpts: Vec<vmta_str> = (0..n).map(|_| s(i.bytes())).collect();
                let nt = (i.byte() % 3) as usize;
                let tags: Vec<vmta_tag> = (0..nt)
                    .map(|_| vmta_tag {
                        key: s(i.bytes()),
                        value: s(i.bytes()),
                    })
                    .collect();
                let mut body = i.bytes().to_vec();
                if i.byte() & 1 == 1 {
                    let mut m = b"From: a@ffi.test\r\nSubject: x\r\n\r\n".to_vec();
                    m.extend_from_slice(&body);
                    body = m;
                }
                let m = vmta_message {
                    sender: s(sender),
                    recipients: if rcpts.is_empty() {
                        null()
                    } else {
                        rcpts.as_ptr()
                    },
                    recipients_len: n,
                    tenant: s(i.bytes()),
                    tags: if tags.is_empty() {
                        null()
                    } else {
                        tags.as_ptr()
                    },
                    tags_len: nt,
                    body: s(&body),
                    priority: u32::from(i.byte() % 3),
                };
                let (mut id, mut err) = (0u64, null_mut());
                let how = i.byte();
                let r = if how & 1 == 0 {
                    ok(vmta_engine_submit(e, &m, &mut id, &mut err))
                } else {
                    ok(vmta_engine_submit_nowait(e, &m, &mut id, &mut err))
                };
                if r == VMTA_OK {
                    pool.ids.push(id);
                } else {
                    assert_eq!(id, 0, "output written on failure");
                    err_slot(pool, err);
                }
                if how & 2 != 0 {
                    let r = ok(vmta_engine_flush(e, u32::from(how >> 4)));
                    assert!(
                        matches!(
                            r,
                            VMTA_OK | VMTA_TIMEOUT | VMTA_NULL_PARAMETER | VMTA_INVALID_HANDLE
                        ),
                        "flush: {r}"
                    );
                }
            }
            6 => {
                let e = pick(&pool.engines, i) as *const vmta_engine;
                let cap = (i.byte() % 9) as usize;
                let mut out: Vec<vmta_event> = Vec::with_capacity(cap);
                let mut n = usize::MAX;
                if ok(vmta_engine_poll_events(e, out.as_mut_ptr(), cap, &mut n)) == VMTA_OK {
                    assert!(n <= cap);
                    out.set_len(n);
                    for ev in &out {
                        // `VMTA_EVENT_REFUSED` is the last kind.
                        assert!((VMTA_EVENT_DELIVERED..=VMTA_EVENT_REFUSED).contains(&ev.kind));
                        for v in [
                            ev.recipient,
                            ev.tenant,
                            ev.text,
                            ev.phase,
                            ev.reason,
                            ev.mx,
                            ev.ip,
                            ev.source,
                        ] {
                            read(v);
                        }
                        for k in 0..ev.tags_len {
                            let t = *ev.tags.add(k);
                            read(t.key);
                            read(t.value);
                        }
                    }
                }
            }
            7 => {
                ok(vmta_engine_wait(
                    pick(&pool.engines, i) as *const vmta_engine,
                    u32::from(i.byte() % 4),
                ));
            }
            8 => {
                ok(vmta_engine_wakeup(
                    pick(&pool.engines, i) as *const vmta_engine
                ));
            }
            9 => {
                let e = pick(&pool.engines, i) as *const vmta_engine;
                let id = if pool.ids.is_empty() || i.byte() & 1 == 0 {
                    u64::from(i.u32())
                } else {
                    pool.ids[i.byte() as usize % pool.ids.len()]
                };
                let mut n = 0;
                ok(vmta_engine_cancel(e, id, &mut n));
            }
            10 => {
                let e = pick(&pool.engines, i) as *const vmta_engine;
                let mut st = vmta_stats::default();
                ok(vmta_engine_stats(e, &mut st));
                let mut b = null_mut();
                if ok(vmta_engine_prometheus(e, &mut b)) == VMTA_OK {
                    pool.buffers.push(b as usize);
                }
                let _ = vmta_engine_event_fd(e);
            }
            11 => {
                ok(vmta_engine_shutdown(
                    pick(&pool.engines, i) as *const vmta_engine,
                    u32::from(i.byte() % 10),
                ));
            }
            12 => {
                ok(vmta_engine_free(pick(&pool.engines, i) as *mut vmta_engine));
            }
            13 => {
                let e = pick(&pool.errors, i) as *mut vmta_error;
                ok(vmta_error_code(e));
                let _ = CStr::from_ptr(vmta_error_message(e)).to_bytes().len();
                let _ = CStr::from_ptr(vmta_error_key(e)).to_bytes().len();
                if i.byte() & 1 == 1 {
                    ok(vmta_error_free(e));
                }
            }
            14 => {
                let b = pick(&pool.buffers, i) as *mut vmta_buffer;
                let (p, n) = (vmta_buffer_data(b), vmta_buffer_len(b));
                if !p.is_null() {
                    read(vmta_str { ptr: p, len: n });
                    assert_eq!(*p.add(n), 0, "buffers end with a NUL");
                }
                if i.byte() & 1 == 1 {
                    ok(vmta_buffer_free(b));
                }
            }
            15 => {
                let text = i.bytes();
                let mut c = std::mem::MaybeUninit::<vmta_classification>::uninit();
                if ok(vmta_classify_reply(
                    text.as_ptr(),
                    text.len(),
                    c.as_mut_ptr(),
                )) == VMTA_OK
                {
                    let c = c.assume_init();
                    read(c.reason);
                    read(c.kind);
                    assert!((VMTA_ACTION_BOUNCE..=VMTA_ACTION_NONE).contains(&c.action));
                }
            }
            16 => {
                if pool.stores.len() >= 2 {
                    return;
                }
                let path = scratch().join(format!("suppressions-{}.log", pool.stores.len()));
                let path = path.to_string_lossy().into_owned();
                let (mut st, mut err) = (null_mut(), null_mut());
                if ok(vmta_suppression_open(
                    path.as_ptr(),
                    path.len(),
                    &mut st,
                    &mut err,
                )) == VMTA_OK
                {
                    pool.stores.push(st as usize);
                } else {
                    err_slot(pool, err);
                }
            }
            17 => {
                let st = pick(&pool.stores, i) as *const vmta_suppression;
                let (t, a, sm, r) = (i.bytes(), i.bytes(), i.bytes(), i.bytes());
                match i.byte() % 3 {
                    0 => {
                        ok(vmta_suppression_add(
                            st,
                            t.as_ptr(),
                            t.len(),
                            a.as_ptr(),
                            a.len(),
                            sm.as_ptr(),
                            sm.len(),
                            r.as_ptr(),
                            r.len(),
                            u64::from(i.u32()),
                        ));
                    }
                    1 => {
                        let mut removed = false;
                        ok(vmta_suppression_remove(
                            st,
                            t.as_ptr(),
                            t.len(),
                            a.as_ptr(),
                            a.len(),
                            sm.as_ptr(),
                            sm.len(),
                            &mut removed,
                        ));
                    }
                    _ => {
                        let mut hit = false;
                        let mut info = std::mem::MaybeUninit::<vmta_suppression_info>::uninit();
                        if ok(vmta_suppression_check(
                            st,
                            t.as_ptr(),
                            t.len(),
                            a.as_ptr(),
                            a.len(),
                            sm.as_ptr(),
                            sm.len(),
                            &mut hit,
                            info.as_mut_ptr(),
                        )) == VMTA_OK
                            && hit
                        {
                            read(info.assume_init().reason);
                        }
                    }
                }
            }
            18 => {
                let st = pick(&pool.stores, i) as *const vmta_suppression;
                let t = i.bytes();
                let mut l = null_mut();
                if ok(vmta_suppression_list_new(st, t.as_ptr(), t.len(), &mut l)) == VMTA_OK {
                    pool.lists.push(l as usize);
                }
            }
            19 => {
                let l = pick(&pool.lists, i) as *mut vmta_suppression_list;
                let n = vmta_suppression_list_len(l);
                let mut e = std::mem::MaybeUninit::<vmta_suppression_entry>::uninit();
                let k = i.byte() as usize;
                if ok(vmta_suppression_list_get(l, k, e.as_mut_ptr())) == VMTA_OK {
                    assert!(k < n);
                    let e = e.assume_init();
                    for v in [e.tenant, e.address, e.stream, e.reason] {
                        read(v);
                    }
                }
                if i.byte() & 1 == 1 {
                    ok(vmta_suppression_list_free(l));
                }
            }
            20 => {
                let (p, d, k) = (i.bytes(), i.bytes(), i.bytes());
                let mut v = null_mut();
                if ok(vmta_verp_new(
                    p.as_ptr(),
                    p.len(),
                    d.as_ptr(),
                    d.len(),
                    k.as_ptr(),
                    k.len(),
                    &mut v,
                )) == VMTA_OK
                {
                    pool.verps.push(v as usize);
                }
                let v = pick(&pool.verps, i) as *const vmta_verp;
                let (id, r) = (i.bytes(), i.bytes());
                let mut b = null_mut();
                if ok(vmta_verp_encode(
                    v,
                    id.as_ptr(),
                    id.len(),
                    r.as_ptr(),
                    r.len(),
                    &mut b,
                )) == VMTA_OK
                {
                    pool.buffers.push(b as usize);
                }
            }
            21 => {
                let st = pick(&pool.stores, i) as *const vmta_suppression;
                let v = if i.byte() & 1 == 0 {
                    null()
                } else {
                    pick(&pool.verps, i) as *const vmta_verp
                };
                let t = i.bytes();
                let mut msg = b"From: MAILER-DAEMON@x\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n".to_vec();
                msg.extend_from_slice(i.bytes());
                let flags = u32::from(i.byte() % 3);
                let (mut r, mut err) = (null_mut(), null_mut());
                if ok(vmta_suppression_feed_report(
                    st,
                    v,
                    t.as_ptr(),
                    t.len(),
                    msg.as_ptr(),
                    msg.len(),
                    flags,
                    &mut r,
                    &mut err,
                )) == VMTA_OK
                {
                    pool.reports.push(r as usize);
                } else {
                    err_slot(pool, err);
                }
            }
            22 => {
                let r = pick(&pool.reports, i) as *mut vmta_report;
                let _ = CStr::from_ptr(vmta_report_kind(r)).to_bytes().len();
                let n = vmta_report_len(r);
                let mut o = std::mem::MaybeUninit::<vmta_report_outcome>::uninit();
                for k in 0..n.min(4) {
                    ok(vmta_report_get(r, k, o.as_mut_ptr()));
                    let o = o.assume_init();
                    for v in [o.recipient, o.message_id, o.reason, o.feedback_type] {
                        read(v);
                    }
                }
                if i.byte() & 1 == 1 {
                    ok(vmta_report_free(r));
                }
            }
            _ => {
                let e = pick(&pool.engines, i) as *const vmta_engine;
                let t = i.bytes();
                ok(vmta_engine_set_tenant_locked(
                    e,
                    t.as_ptr(),
                    t.len(),
                    i.byte() & 1 == 1,
                ));
                ok(vmta_result_str(i.u32()).is_null() as vmta_result);
            }
        }
    }
}

/// Runs one input: with `engines`, on a shared engine and at most one started by the input;
/// without, no engine exists and every engine call gets a handle that is not one.
pub fn run(data: &[u8], engines: bool) {
    let _ = std::fs::create_dir_all(scratch());
    let shared = if engines { shared_engine() } else { 0 };
    let mut pool = Pool {
        engines: if engines { vec![shared] } else { Vec::new() },
        engines_allowed: engines,
        ..Pool::default()
    };
    let mut input = Input(data);
    let mut steps = 0;
    while !input.done() && steps < 64 {
        step(&mut pool, &mut input);
        steps += 1;
    }
    // Free whatever is left (freeing twice is part of the contract: it must answer, not crash).
    for e in pool.engines.iter().filter(|&&e| e != shared) {
        ok(vmta_engine_free(*e as *mut vmta_engine));
    }
    for c in &pool.configs {
        ok(vmta_config_free(*c as *mut vmta_config));
    }
    for e in &pool.errors {
        ok(vmta_error_free(*e as *mut vmta_error));
    }
    for b in &pool.buffers {
        ok(vmta_buffer_free(*b as *mut vmta_buffer));
    }
    for l in &pool.lists {
        ok(vmta_suppression_list_free(*l as *mut vmta_suppression_list));
    }
    for r in &pool.reports {
        ok(vmta_report_free(*r as *mut vmta_report));
    }
    for v in &pool.verps {
        ok(vmta_verp_free(*v as *mut vmta_verp));
    }
    for s in &pool.stores {
        ok(vmta_suppression_free(*s as *mut vmta_suppression));
    }
    let _ = std::fs::remove_dir_all(scratch());
}
