//! The HTTP API's injection parser (`POST /api/v1/messages`) fed arbitrary bodies, as an admin or
//! as a tenant token: it must never panic, and what it accepts is what the engine may be given:
//! every message with a recipient, a tenant (the token's own for a tenant token), CRLF line ends
//! only, and the MIME it built parseable as far as its header block goes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmta_serve::http::Caller;
use vmta_serve::http::inject::{Request, submissions};

fuzz_target!(|data: &[u8]| {
    let Some((&who, body)) = data.split_first() else {
        return;
    };
    let caller = Caller {
        name: "fuzz".into(),
        tenant: (who & 1 == 1).then(|| "own".to_string()),
    };
    let req = Request {
        default_tenant: "default",
        tls: who & 2 == 2,
        max_messages: 64,
    };
    let peer = "127.0.0.1:1".parse().unwrap();
    if let Ok(subs) = submissions(&req, &caller, peer, body) {
        assert!(!subs.is_empty() && subs.len() <= 64);
        for s in &subs {
            assert!(!s.recipients.is_empty());
            assert!(!s.tenant.is_empty());
            if let Some(own) = &caller.tenant {
                assert_eq!(&s.tenant, own);
            }
            let b = &s.body;
            for (i, &c) in b.iter().enumerate() {
                if c == b'\n' {
                    assert!(i > 0 && b[i - 1] == b'\r', "bare LF at {i}");
                }
                if c == b'\r' {
                    assert_eq!(b.get(i + 1), Some(&b'\n'), "bare CR at {i}");
                }
            }
        }
    }
});
