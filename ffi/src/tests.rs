//! Tests of the exported functions called as C calls them (no network: see examples/ for the
//! bindings' tests against real SMTP peers).

use super::bounce::*;
use super::buffer::*;
use super::config::*;
use super::engine::*;
use super::error::*;
use super::result::*;
use super::*;
use std::ffi::CStr;
use std::ptr::{null, null_mut};

fn s(text: &str) -> vmta_str {
    vmta_str {
        ptr: text.as_ptr(),
        len: text.len(),
    }
}

fn cstr(p: *const std::ffi::c_char) -> String {
    // SAFETY: the functions under test return NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn view(v: vmta_str) -> String {
    if v.len == 0 {
        return String::new();
    }
    // SAFETY: views handed out by vmta are valid for their length while the owner lives.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(v.ptr, v.len) }).into_owned()
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "vmta-ffi-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn join(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn version_number_is_computed_from_the_package_version() {
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap();
    let patch: u32 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap();
    assert_eq!(
        (VMTA_VERSION_MAJOR, VMTA_VERSION_MINOR, VMTA_VERSION_PATCH),
        (major, minor, patch),
        "the header's VMTA_VERSION_* must follow Cargo.toml"
    );
    assert_eq!(vmta_version(), major * 10000 + minor * 100 + patch);
    assert_eq!(vmta_version(), VMTA_VERSION_NUMBER);
}

/// A configuration that starts an engine delivering nowhere: a smarthost on a closed port.
fn offline_config(dir: &Dir) -> *mut vmta_config {
    let mut c = null_mut();
    // SAFETY: valid pointers to locals and strings.
    unsafe {
        assert_eq!(vmta_config_new(&mut c), VMTA_OK);
        let spool = dir.join("spool");
        assert_eq!(
            vmta_config_set_spool_dir(c, spool.as_ptr(), spool.len()),
            VMTA_OK
        );
        let relay = "127.0.70.254:9";
        assert_eq!(
            vmta_config_set_smarthost(c, relay.as_ptr(), relay.len(), VMTA_TLS_DISABLED),
            VMTA_OK
        );
    }
    assert_eq!(vmta_config_set_shards(c, 1), VMTA_OK);
    assert_eq!(vmta_config_set_pin_shards(c, false), VMTA_OK);
    assert_eq!(vmta_config_set_durability(c, VMTA_DURABILITY_NONE), VMTA_OK);
    assert_eq!(vmta_config_set_spool_segment_mb(c, 2), VMTA_OK);
    c
}

#[test]
fn configuration_errors_name_the_key() {
    let toml = "[delivery]\nport = \"x\"\n";
    let mut c = null_mut();
    let mut err = null_mut();
    // SAFETY: valid pointers.
    let r = unsafe { vmta_config_from_toml(toml.as_ptr(), toml.len(), &mut c, &mut err) };
    assert_eq!(r, VMTA_CONFIG);
    assert!(c.is_null(), "outputs are written only on success");
    assert_eq!(vmta_error_code(err), VMTA_CONFIG);
    assert_eq!(cstr(vmta_error_key(err)), "delivery.port");
    assert!(cstr(vmta_error_message(err)).contains("delivery.port"));
    assert_eq!(vmta_error_free(err), VMTA_OK);
    assert_eq!(vmta_error_free(err), VMTA_INVALID_HANDLE);
    assert_eq!(cstr(vmta_error_message(err)), "");

    // A value only the engine checks is reported at start, with its key.
    let dir = Dir::new("cfg");
    let c = offline_config(&dir);
    let rules = "[defaults]\nmax_connections = \"lots\"\n";
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            vmta_config_set_shaping_rules(c, rules.as_ptr(), rules.len()),
            VMTA_OK
        );
        let mut e = null_mut();
        let mut err = null_mut();
        assert_eq!(vmta_engine_new(c, &mut e, &mut err), VMTA_CONFIG);
        assert!(e.is_null());
        assert_eq!(cstr(vmta_error_key(err)), "shaping.rules");
        vmta_error_free(err);
    }
    assert_eq!(vmta_config_free(c), VMTA_OK);
}

#[test]
fn setters_refuse_bad_values() {
    let mut c = null_mut();
    // SAFETY: valid pointers, or deliberately NULL ones with the lengths the contract allows.
    unsafe {
        assert_eq!(vmta_config_new(&mut c), VMTA_OK);
        assert_eq!(vmta_config_set_durability(c, 7), VMTA_INVALID_ARGUMENT);
        assert_eq!(
            vmta_config_set_spool_segment_mb(c, 0),
            VMTA_INVALID_ARGUMENT
        );
        assert_eq!(
            vmta_config_set_spool_segment_mb(c, 4097),
            VMTA_INVALID_ARGUMENT
        );
        assert_eq!(
            vmta_config_set_spool_segment_mb(null_mut(), 2),
            VMTA_NULL_PARAMETER
        );
        assert_eq!(vmta_config_set_tls(c, 3), VMTA_INVALID_ARGUMENT);
        assert_eq!(vmta_config_set_port(c, 0), VMTA_INVALID_ARGUMENT);
        assert_eq!(
            vmta_config_set_spool_dir(c, null(), 0),
            VMTA_INVALID_ARGUMENT
        );
        assert_eq!(vmta_config_set_spool_dir(c, null(), 5), VMTA_NULL_PARAMETER);
        let bad = [0xffu8, 0xfe];
        assert_eq!(
            vmta_config_set_spool_dir(c, bad.as_ptr(), bad.len()),
            VMTA_INVALID_UTF8
        );
        let ns = "not a nameserver";
        assert_eq!(
            vmta_config_add_nameserver(c, ns.as_ptr(), ns.len()),
            VMTA_INVALID_ARGUMENT
        );
        let ns = "127.0.70.1:5353";
        assert_eq!(
            vmta_config_add_nameserver(c, ns.as_ptr(), ns.len()),
            VMTA_OK
        );
        assert_eq!(vmta_config_set_retry(c, 0, 10, 100), VMTA_INVALID_ARGUMENT);
        assert_eq!(vmta_config_set_retry(c, 60, 600, 3600), VMTA_OK);
        let big = vec![b'a'; VMTA_MAX_CONFIG_SIZE + 1];
        assert_eq!(
            vmta_config_set_shaping_rules(c, big.as_ptr(), big.len()),
            VMTA_TOO_LARGE
        );
        assert_eq!(vmta_config_new(null_mut()), VMTA_NULL_PARAMETER);
    }
    assert_eq!(vmta_config_set_shards(null_mut(), 1), VMTA_NULL_PARAMETER);
    assert_eq!(vmta_config_free(c), VMTA_OK);
    assert_eq!(vmta_config_set_shards(c, 1), VMTA_INVALID_HANDLE);
    assert_eq!(vmta_config_free(c), VMTA_INVALID_HANDLE);
    assert_eq!(vmta_config_free(null_mut()), VMTA_OK);
}

fn message<'a>(sender: &'a str, rcpts: &'a [vmta_str], body: &'a str) -> vmta_message {
    vmta_message {
        sender: s(sender),
        recipients: rcpts.as_ptr(),
        recipients_len: rcpts.len(),
        tenant: s(""),
        tags: null(),
        tags_len: 0,
        body: s(body),
        priority: VMTA_PRIORITY_TRANSACTIONAL,
    }
}

const BODY: &str = "From: a@ffi.test\r\nTo: b@ffi.test\r\nSubject: t\r\n\r\nhello\r\n";

#[test]
fn an_engine_takes_submissions_cancels_and_refuses_after_shutdown() {
    let dir = Dir::new("engine");
    let c = offline_config(&dir);
    let mut e = null_mut();
    // SAFETY: valid pointers throughout; deliberate NULLs where the contract says they are refused.
    unsafe {
        assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK);
        assert_eq!(
            vmta_config_free(c),
            VMTA_OK,
            "the engine keeps its own copy"
        );
        assert!(vmta_engine_event_fd(e) >= 0);

        let rcpts = [s("b@ffi.test"), s("c@ffi.test")];
        let tags = [vmta_tag {
            key: s("campaign"),
            value: s("c1"),
        }];
        let mut m = message("a@ffi.test", &rcpts, BODY);
        m.tags = tags.as_ptr();
        m.tags_len = 1;
        let mut id = 0u64;
        assert_eq!(vmta_engine_submit(e, &m, &mut id, null_mut()), VMTA_OK);
        assert_ne!(id, 0);

        let mut n = 0usize;
        assert_eq!(vmta_engine_cancel(e, id, &mut n), VMTA_OK);
        // Cancelled unless a delivery attempt had the recipients in flight at that moment; then the
        // connection refusal defers them first. Either way, events come for both recipients.
        let mut seen = Vec::new();
        let mut events: Vec<vmta_event> = Vec::with_capacity(8);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while seen.len() < 2 && std::time::Instant::now() < deadline {
            let _ = vmta_engine_wait(e, 200);
            let mut count = 0;
            assert_eq!(
                vmta_engine_poll_events(e, events.as_mut_ptr(), 8, &mut count),
                VMTA_OK
            );
            events.set_len(count);
            for ev in &events {
                if ev.kind == VMTA_EVENT_CANCELLED {
                    // The engine builds cancelled events after removing the message from the spool,
                    // so they carry neither the host's message id nor the tags (a core engine bug,
                    // reported in docs/ffi.md); the recipient is right.
                    seen.push(view(ev.recipient));
                } else {
                    assert_eq!(ev.message_id, id);
                    assert_eq!(ev.tags_len, 1);
                    let tag = *ev.tags;
                    assert_eq!(
                        (view(tag.key), view(tag.value)),
                        ("campaign".into(), "c1".into())
                    );
                }
            }
            if n < 2 && seen.is_empty() {
                vmta_engine_cancel(e, id, &mut n);
            }
        }
        seen.sort();
        assert_eq!(seen, ["b@ffi.test", "c@ffi.test"]);

        let mut stats = vmta_stats::default();
        assert_eq!(vmta_engine_stats(e, &mut stats), VMTA_OK);
        assert_eq!(stats.shards, 1);
        assert_eq!(stats.submitted, 2);
        assert_eq!(stats.cancelled, 2);
        let mut text = null_mut();
        assert_eq!(vmta_engine_prometheus(e, &mut text), VMTA_OK);
        let prom = CStr::from_ptr(vmta_buffer_data(text).cast())
            .to_str()
            .unwrap();
        assert_eq!(prom.len(), vmta_buffer_len(text));
        assert!(
            prom.contains("vmta_cancelled_total{shard=\"0\"} 2"),
            "{prom}"
        );
        assert_eq!(vmta_buffer_free(text), VMTA_OK);
        assert_eq!(vmta_buffer_free(text), VMTA_INVALID_HANDLE);

        assert_eq!(vmta_engine_wakeup(e), VMTA_OK);
        assert_eq!(vmta_engine_shutdown(e, 0), VMTA_OK);
        assert_eq!(vmta_engine_shutdown(e, 0), VMTA_OK, "twice is harmless");
        let mut err = null_mut();
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, &mut err),
            VMTA_SHUTTING_DOWN
        );
        assert_eq!(vmta_error_code(err), VMTA_SHUTTING_DOWN);
        vmta_error_free(err);
        assert_eq!(vmta_engine_wait(e, 10_000), VMTA_SHUTTING_DOWN, "at once");
        assert_eq!(vmta_engine_free(e), VMTA_OK);
        assert_eq!(vmta_engine_free(e), VMTA_INVALID_HANDLE);
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, null_mut()),
            VMTA_INVALID_HANDLE
        );
        assert_eq!(vmta_engine_event_fd(e), -1);
    }
}

#[test]
fn submissions_are_checked_before_anything_is_queued() {
    let dir = Dir::new("submit");
    let c = offline_config(&dir);
    let mut e = null_mut();
    // SAFETY: valid pointers, or deliberately NULL ones.
    unsafe {
        assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK);
        vmta_config_free(c);
        let rcpts = [s("b@ffi.test")];
        let good = message("a@ffi.test", &rcpts, BODY);
        let mut id = 0u64;
        let submit = |m: &vmta_message, id: &mut u64| vmta_engine_submit(e, m, id, null_mut());

        assert_eq!(
            vmta_engine_submit(e, null(), &mut id, null_mut()),
            VMTA_NULL_PARAMETER
        );
        assert_eq!(
            vmta_engine_submit(e, &good, null_mut(), null_mut()),
            VMTA_NULL_PARAMETER
        );
        assert_eq!(
            vmta_engine_submit(null(), &good, &mut id, null_mut()),
            VMTA_NULL_PARAMETER
        );

        let mut m = good;
        m.recipients = null();
        assert_eq!(submit(&m, &mut id), VMTA_NULL_PARAMETER);
        m.recipients_len = 0;
        let mut err = null_mut();
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, &mut err),
            VMTA_INVALID_MESSAGE
        );
        assert!(cstr(vmta_error_message(err)).contains("no recipients"));
        vmta_error_free(err);

        let bad = [0xc3u8, 0x28];
        let bad_rcpt = [vmta_str {
            ptr: bad.as_ptr(),
            len: 2,
        }];
        let m = message("a@ffi.test", &bad_rcpt, BODY);
        assert_eq!(submit(&m, &mut id), VMTA_INVALID_UTF8);

        let long = "x".repeat(VMTA_MAX_FIELD_SIZE + 1);
        let long_rcpt = [s(&long)];
        assert_eq!(
            submit(&message("a@ffi.test", &long_rcpt, BODY), &mut id),
            VMTA_TOO_LARGE
        );

        let mut m = good;
        m.body = vmta_str {
            ptr: BODY.as_ptr(),
            len: VMTA_MAX_MESSAGE_SIZE + 1,
        };
        assert_eq!(
            submit(&m, &mut id),
            VMTA_TOO_LARGE,
            "refused before reading"
        );
        m.body = s("");
        assert_eq!(submit(&m, &mut id), VMTA_INVALID_MESSAGE);
        m.body = vmta_str {
            ptr: null(),
            len: 10,
        };
        assert_eq!(submit(&m, &mut id), VMTA_NULL_PARAMETER);

        let mut m = good;
        m.priority = 9;
        assert_eq!(submit(&m, &mut id), VMTA_INVALID_ARGUMENT);
        let mut m = good;
        m.tags_len = VMTA_MAX_TAGS + 1;
        m.tags = [vmta_tag {
            key: s("k"),
            value: s("v"),
        }]
        .as_ptr();
        assert_eq!(submit(&m, &mut id), VMTA_TOO_LARGE);

        let no_at = [s("nobody")];
        assert_eq!(
            submit(&message("a@ffi.test", &no_at, BODY), &mut id),
            VMTA_INVALID_MESSAGE
        );
        assert_eq!(id, 0, "no id written by a refusal");

        let mut stats = vmta_stats::default();
        vmta_engine_stats(e, &mut stats);
        assert_eq!(stats.submitted, 0, "nothing was queued");

        assert_eq!(
            vmta_engine_set_tenant_locked(e, "acme".as_ptr(), 4, true),
            VMTA_UNKNOWN_TENANT
        );
        let mut count = 7usize;
        assert_eq!(
            vmta_engine_poll_events(e, null_mut(), 0, &mut count),
            VMTA_OK
        );
        assert_eq!(count, 0);
        assert_eq!(
            vmta_engine_poll_events(e, null_mut(), 1, &mut count),
            VMTA_NULL_PARAMETER
        );
        vmta_engine_free(e);
    }
}

const TENANTS: &str = r#"
[engine]
shards = 1
pin_shards = false
spool_segment_mb = 2
durability = "none"
[smarthost]
address = "127.0.70.254:9"
tls = "disabled"
[[tenant]]
name = "acme"
pool = "default"
sender_domains = ["acme.example"]
"#;

#[test]
fn sender_policy_refusals_have_their_own_codes() {
    let dir = Dir::new("tenants");
    let toml = TENANTS.replacen(
        "durability = \"none\"",
        &format!("durability = \"none\"\nspool_dir = {:?}", dir.join("spool")),
        1,
    );
    let mut c = null_mut();
    let mut e = null_mut();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            vmta_config_from_toml(toml.as_ptr(), toml.len(), &mut c, null_mut()),
            VMTA_OK
        );
        assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK);
        vmta_config_free(c);
        let rcpts = [s("b@ffi.test")];
        let body = "From: news@acme.example\r\nTo: b@ffi.test\r\nSubject: t\r\n\r\nhello\r\n";
        let mut m = message("news@acme.example", &rcpts, body);
        let mut id = 0;
        m.tenant = s("other");
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, null_mut()),
            VMTA_UNKNOWN_TENANT
        );
        m.tenant = s("acme");
        m.sender = s("news@elsewhere.example");
        let mut err = null_mut();
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, &mut err),
            VMTA_SENDER_NOT_APPROVED
        );
        assert!(cstr(vmta_error_message(err)).contains("elsewhere.example"));
        vmta_error_free(err);
        m.sender = s("news@acme.example");
        assert_eq!(
            vmta_engine_set_tenant_locked(e, "acme".as_ptr(), 4, true),
            VMTA_OK
        );
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, null_mut()),
            VMTA_ACCOUNT_LOCKED
        );
        assert_eq!(
            vmta_engine_set_tenant_locked(e, "acme".as_ptr(), 4, false),
            VMTA_OK
        );
        m.body = s("no header separator at all");
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, null_mut()),
            VMTA_INVALID_MESSAGE
        );
        m.body = s(body);
        assert_eq!(vmta_engine_submit(e, &m, &mut id, null_mut()), VMTA_OK);
        vmta_engine_free(e);
    }
}

#[test]
fn two_threads_polling_get_an_error_not_a_race() {
    let dir = Dir::new("poll");
    let c = offline_config(&dir);
    let mut e = null_mut();
    // SAFETY: valid pointers.
    unsafe { assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK) };
    vmta_config_free(c);
    let addr = e as usize;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let e = addr as *const vmta_engine;
                let mut codes = std::collections::BTreeSet::new();
                let mut buf: Vec<vmta_event> = Vec::with_capacity(4);
                for _ in 0..2000 {
                    let mut n = 0;
                    // SAFETY: buf has room for 4 events; n is a local.
                    codes
                        .insert(unsafe { vmta_engine_poll_events(e, buf.as_mut_ptr(), 4, &mut n) });
                }
                codes
            })
        })
        .collect();
    let mut all = std::collections::BTreeSet::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    assert!(
        all.is_subset(&[VMTA_OK, VMTA_CONCURRENT_POLL].into()),
        "{all:?}"
    );
    vmta_engine_free(e);
}

#[test]
fn replies_are_classified() {
    let mut c = std::mem::MaybeUninit::<vmta_classification>::uninit();
    let reply = "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown";
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            vmta_classify_reply(reply.as_ptr(), reply.len(), c.as_mut_ptr()),
            VMTA_OK
        );
        let c = c.assume_init();
        assert_eq!(view(c.reason), "userunknown");
        assert_eq!(view(c.kind), "hard");
        assert_eq!(c.action, VMTA_ACTION_BOUNCE);
        let mut c2 = std::mem::MaybeUninit::<vmta_classification>::uninit();
        let reply = "421 4.7.0 Too many connections, slow down";
        assert_eq!(
            vmta_classify_reply(reply.as_ptr(), reply.len(), c2.as_mut_ptr()),
            VMTA_OK
        );
        let c2 = c2.assume_init();
        assert_eq!(c2.action, VMTA_ACTION_RETRY);
        assert!(c2.retry_after_s > 0);
        assert_eq!(
            vmta_classify_reply(null(), 0, c2_ptr()),
            VMTA_INVALID_ARGUMENT
        );
        assert_eq!(
            vmta_classify_reply(reply.as_ptr(), reply.len(), null_mut()),
            VMTA_NULL_PARAMETER
        );
    }
}

fn c2_ptr() -> *mut vmta_classification {
    Box::leak(Box::new(
        std::mem::MaybeUninit::<vmta_classification>::uninit(),
    ))
    .as_mut_ptr()
}

#[test]
fn suppression_list_round_trip_and_reports() {
    let dir = Dir::new("suppress");
    let path = dir.join("suppressions.log");
    let mut st = null_mut();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            vmta_suppression_open(path.as_ptr(), path.len(), &mut st, null_mut()),
            VMTA_OK
        );
        let (t, a) = ("acme", "John@Example.COM");
        assert_eq!(
            vmta_suppression_add(
                st,
                t.as_ptr(),
                4,
                a.as_ptr(),
                a.len(),
                null(),
                0,
                "userunknown".as_ptr(),
                11,
                0
            ),
            VMTA_OK
        );
        assert_eq!(
            vmta_suppression_add(
                st,
                t.as_ptr(),
                4,
                a.as_ptr(),
                a.len(),
                null(),
                0,
                "nonsense".as_ptr(),
                8,
                0
            ),
            VMTA_INVALID_ARGUMENT
        );
        let mut hit = false;
        let mut info = std::mem::MaybeUninit::<vmta_suppression_info>::uninit();
        let lower = "john@example.com";
        assert_eq!(
            vmta_suppression_check(
                st,
                t.as_ptr(),
                4,
                lower.as_ptr(),
                lower.len(),
                null(),
                0,
                &mut hit,
                info.as_mut_ptr()
            ),
            VMTA_OK
        );
        assert!(hit);
        let info = info.assume_init();
        assert_eq!(view(info.reason), "userunknown");
        assert_eq!(info.source, VMTA_SOURCE_MANUAL);

        let mut list = null_mut();
        assert_eq!(vmta_suppression_list_new(st, null(), 0, &mut list), VMTA_OK);
        assert_eq!(vmta_suppression_list_len(list), 1);
        let mut entry = std::mem::MaybeUninit::<vmta_suppression_entry>::uninit();
        assert_eq!(
            vmta_suppression_list_get(list, 0, entry.as_mut_ptr()),
            VMTA_OK
        );
        assert_eq!(view(entry.assume_init().address), lower);
        assert_eq!(
            vmta_suppression_list_get(list, 1, entry.as_mut_ptr()),
            VMTA_NOT_FOUND
        );
        assert_eq!(vmta_suppression_list_free(list), VMTA_OK);

        let mut removed = false;
        assert_eq!(
            vmta_suppression_remove(
                st,
                t.as_ptr(),
                4,
                a.as_ptr(),
                a.len(),
                null(),
                0,
                &mut removed
            ),
            VMTA_OK
        );
        assert!(removed);
        vmta_suppression_check(
            st,
            t.as_ptr(),
            4,
            lower.as_ptr(),
            lower.len(),
            null(),
            0,
            &mut hit,
            null_mut(),
        );
        assert!(!hit);

        // A DSN sent back to a signed VERP address suppresses the recipient it names.
        let mut verp = null_mut();
        let key = b"tenant secret";
        assert_eq!(
            vmta_verp_new(
                "bounces".as_ptr(),
                7,
                "bounce.acme.example".as_ptr(),
                19,
                key.as_ptr(),
                key.len(),
                &mut verp
            ),
            VMTA_OK
        );
        let mut rp = null_mut();
        let rcpt = "gone@example.net";
        assert_eq!(
            vmta_verp_encode(verp, "m42".as_ptr(), 3, rcpt.as_ptr(), rcpt.len(), &mut rp),
            VMTA_OK
        );
        let return_path = CStr::from_ptr(vmta_buffer_data(rp).cast())
            .to_str()
            .unwrap()
            .to_string();
        vmta_buffer_free(rp);
        let dsn = format!(
            "From: MAILER-DAEMON@mx.example.net\r\nTo: {return_path}\r\nSubject: Undelivered Mail\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
             Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--b--\r\n"
        );
        let mut report = null_mut();
        assert_eq!(
            vmta_suppression_feed_report(
                st,
                verp,
                "acme".as_ptr(),
                4,
                dsn.as_ptr(),
                dsn.len(),
                0,
                &mut report,
                null_mut()
            ),
            VMTA_OK
        );
        assert_eq!(cstr(vmta_report_kind(report)), "dsn");
        assert_eq!(vmta_report_len(report), 1);
        let mut o = std::mem::MaybeUninit::<vmta_report_outcome>::uninit();
        assert_eq!(vmta_report_get(report, 0, o.as_mut_ptr()), VMTA_OK);
        let o = o.assume_init();
        assert_eq!(o.event, VMTA_OUTCOME_BOUNCED);
        assert_eq!(view(o.reason), "userunknown");
        assert_eq!(view(o.message_id), "m42");
        assert!(o.verified && o.suppressed);
        assert_eq!(vmta_report_free(report), VMTA_OK);
        assert_eq!(vmta_report_free(report), VMTA_INVALID_HANDLE);
        vmta_suppression_check(
            st,
            t.as_ptr(),
            4,
            rcpt.as_ptr(),
            rcpt.len(),
            null(),
            0,
            &mut hit,
            null_mut(),
        );
        assert!(hit);
        assert_eq!(vmta_verp_free(verp), VMTA_OK);
        assert_eq!(vmta_suppression_free(st), VMTA_OK);
        assert_eq!(vmta_suppression_free(st), VMTA_INVALID_HANDLE);
    }
}

/// Polls until `want` events of `kind` came or 10 s passed; returns (message id, recipient,
/// reason, tag count) of each.
///
/// # Safety
/// `e` a live engine.
unsafe fn events_of(
    e: *mut vmta_engine,
    kind: u32,
    want: usize,
) -> Vec<(u64, String, String, usize)> {
    let mut got = Vec::new();
    let mut events: Vec<vmta_event> = Vec::with_capacity(16);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < want && std::time::Instant::now() < deadline {
        // SAFETY: passed on from the caller; the buffer has room for 16 events.
        unsafe {
            let _ = vmta_engine_wait(e, 200);
            let mut count = 0;
            assert_eq!(
                vmta_engine_poll_events(e, events.as_mut_ptr(), 16, &mut count),
                VMTA_OK
            );
            events.set_len(count);
        }
        for ev in &events {
            if ev.kind == kind {
                got.push((
                    ev.message_id,
                    view(ev.recipient),
                    view(ev.reason),
                    ev.tags_len,
                ));
            }
        }
    }
    got
}

#[test]
fn the_engine_refuses_suppressed_recipients_and_applies_reports() {
    let dir = Dir::new("engine-suppress");
    let c = offline_config(&dir);
    let mut e = null_mut();
    // SAFETY: valid pointers throughout; deliberate NULLs where the contract says they are refused.
    unsafe {
        assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK);
        vmta_config_free(c);
        let (t, gone) = ("", "Gone@ffi.test");
        assert_eq!(
            vmta_engine_suppression_add(
                e,
                t.as_ptr(),
                0,
                gone.as_ptr(),
                gone.len(),
                null(),
                0,
                "userunknown".as_ptr(),
                11,
                0
            ),
            VMTA_OK
        );
        assert_eq!(
            vmta_engine_suppression_add(e, null(), 0, "x".as_ptr(), 1, null(), 0, null(), 0, 0),
            VMTA_INVALID_ARGUMENT,
            "not an address"
        );
        let mut hit = false;
        let mut info = std::mem::MaybeUninit::<vmta_suppression_info>::uninit();
        let lower = "gone@ffi.test";
        assert_eq!(
            vmta_engine_suppression_check(
                e,
                null(),
                0,
                lower.as_ptr(),
                lower.len(),
                null(),
                0,
                &mut hit,
                info.as_mut_ptr()
            ),
            VMTA_OK
        );
        assert!(hit);
        assert_eq!(view(info.assume_init().reason), "userunknown");
        assert_eq!(
            vmta_engine_suppression_check(e, null(), 0, null(), 3, null(), 0, &mut hit, null_mut()),
            VMTA_NULL_PARAMETER
        );

        // Only suppressed recipients: refused, nothing queued.
        let only = [s(gone)];
        let m = message("a@ffi.test", &only, BODY);
        let mut id = 0u64;
        let mut err = null_mut();
        assert_eq!(
            vmta_engine_submit(e, &m, &mut id, &mut err),
            VMTA_SUPPRESSED
        );
        assert_eq!(id, 0, "outputs are written only on success");
        assert!(cstr(vmta_error_message(err)).contains("Gone@ffi.test (userunknown)"));
        vmta_error_free(err);
        // With another recipient: queued, and an event for the suppressed one.
        let both = [s("live@ffi.test"), s(gone)];
        let tags = [vmta_tag {
            key: s("campaign"),
            value: s("c9"),
        }];
        let mut m = message("a@ffi.test", &both, BODY);
        m.tags = tags.as_ptr();
        m.tags_len = 1;
        assert_eq!(vmta_engine_submit(e, &m, &mut id, null_mut()), VMTA_OK);
        let s_ev = events_of(e, VMTA_EVENT_SUPPRESSED, 1);
        assert_eq!(s_ev, [(id, gone.to_string(), "userunknown".to_string(), 1)]);
        let mut stats = vmta_stats::default();
        vmta_engine_stats(e, &mut stats);
        assert_eq!((stats.suppressed, stats.submitted), (2, 1));

        // A DSN (no VERP configured: matched by address and tenant) bounces a delivered recipient.
        let late = "late@ffi.test";
        let dsn = format!(
            "From: MAILER-DAEMON@mx.ffi.test\r\nTo: a@ffi.test\r\nSubject: Undelivered Mail\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.ffi.test\r\n\r\n\
             Final-Recipient: rfc822; {late}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--b--\r\n"
        );
        let mut report = null_mut();
        assert_eq!(
            vmta_engine_apply_report(
                e,
                null(),
                0,
                dsn.as_ptr(),
                dsn.len(),
                &mut report,
                null_mut()
            ),
            VMTA_OK
        );
        assert_eq!(cstr(vmta_report_kind(report)), "dsn");
        assert_eq!(vmta_report_len(report), 1);
        assert_eq!(vmta_report_message_id(report), 0, "no VERP, no Message-ID");
        let mut o = std::mem::MaybeUninit::<vmta_report_outcome>::uninit();
        assert_eq!(vmta_report_get(report, 0, o.as_mut_ptr()), VMTA_OK);
        let o = o.assume_init();
        assert_eq!(o.event, VMTA_OUTCOME_BOUNCED);
        assert!(o.suppressed && !o.verified);
        assert_eq!(vmta_report_free(report), VMTA_OK);
        let l_ev = events_of(e, VMTA_EVENT_LATE_BOUNCE, 1);
        assert_eq!(l_ev, [(0, late.to_string(), "userunknown".to_string(), 0)]);
        vmta_engine_suppression_check(
            e,
            null(),
            0,
            late.as_ptr(),
            late.len(),
            null(),
            0,
            &mut hit,
            null_mut(),
        );
        assert!(hit);
        assert_eq!(
            vmta_engine_apply_report(e, null(), 0, null(), 0, &mut report, null_mut()),
            VMTA_INVALID_ARGUMENT
        );

        let mut list = null_mut();
        assert_eq!(
            vmta_engine_suppression_list_new(e, null(), 0, &mut list),
            VMTA_OK
        );
        assert_eq!(vmta_suppression_list_len(list), 2);
        assert_eq!(vmta_suppression_list_free(list), VMTA_OK);
        let mut removed = false;
        assert_eq!(
            vmta_engine_suppression_remove(
                e,
                null(),
                0,
                gone.as_ptr(),
                gone.len(),
                null(),
                0,
                &mut removed
            ),
            VMTA_OK
        );
        assert!(removed);
        let m = message("a@ffi.test", &only, BODY);
        assert_eq!(vmta_engine_submit(e, &m, &mut id, null_mut()), VMTA_OK);
        assert_eq!(vmta_engine_free(e), VMTA_OK);
    }

    // With VERP: a report to a VERP address that does not verify is refused.
    let dir = Dir::new("engine-forged");
    let c = offline_config(&dir);
    // SAFETY: valid pointers.
    unsafe {
        let (p, d, k) = ("bounces", "bounce.ffi.test", "a key of sixteen bytes");
        assert_eq!(
            vmta_config_set_verp(c, p.as_ptr(), p.len(), d.as_ptr(), d.len(), k.as_ptr(), 3),
            VMTA_INVALID_ARGUMENT,
            "short key"
        );
        assert_eq!(
            vmta_config_set_verp(
                c,
                p.as_ptr(),
                p.len(),
                d.as_ptr(),
                d.len(),
                k.as_ptr(),
                k.len()
            ),
            VMTA_OK
        );
        let mut e = null_mut();
        assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK);
        let forged = "From: MAILER-DAEMON@x.test\r\nTo: bounces+0000000000000001.aaaaaaaaaaaaa.ceo=ffi.test@bounce.ffi.test\r\nSubject: failure\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; ceo@ffi.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n";
        let mut report = null_mut();
        let mut err = null_mut();
        assert_eq!(
            vmta_engine_apply_report(
                e,
                null(),
                0,
                forged.as_ptr(),
                forged.len(),
                &mut report,
                &mut err
            ),
            VMTA_FORGED_REPORT
        );
        assert!(report.is_null());
        assert!(cstr(vmta_error_message(err)).contains("does not verify"));
        vmta_error_free(err);
        let mut list = null_mut();
        vmta_engine_suppression_list_new(e, null(), 0, &mut list);
        assert_eq!(vmta_suppression_list_len(list), 0);
        vmta_suppression_list_free(list);
        assert_eq!(vmta_engine_free(e), VMTA_OK);
        // Disabled: the list calls say so.
        assert_eq!(vmta_config_set_suppression(c, false), VMTA_OK);
        let mut e = null_mut();
        assert_eq!(vmta_engine_new(c, &mut e, null_mut()), VMTA_OK);
        vmta_config_free(c);
        assert_eq!(
            vmta_engine_suppression_add(e, null(), 0, "a@b.c".as_ptr(), 5, null(), 0, null(), 0, 0),
            VMTA_DISABLED
        );
        assert_eq!(vmta_engine_free(e), VMTA_OK);
    }
}
