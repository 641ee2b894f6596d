//! `/etc/resolv.conf` as the resolver reads it (`dns::Config::from_resolv_conf`), and nameserver
//! addresses as the configuration gives them (`dns::parse_nameserver`). Whatever the text, the
//! configuration read must pass the resolver's own checks (a nameserver at least, attempts and a
//! timeout within their bounds), and an address parsed must parse again to itself from its text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmta::dns::{Config, parse_nameserver};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = Config::from_resolv_conf(text);
    c.validate().unwrap_or_else(|e| {
        panic!("resolv.conf read into a configuration the resolver refuses: {e}")
    });
    assert!(
        c.nameservers.len() <= 8,
        "more nameservers than the resolver keeps"
    );
    assert!(c.timeout.as_secs() >= 1 && c.attempts >= 1 && c.ndots <= 15);
    for word in text.split_whitespace().take(64) {
        if let Ok(addr) = parse_nameserver(word) {
            assert_eq!(
                parse_nameserver(&addr.to_string()).ok(),
                Some(addr),
                "{word:?}"
            );
        }
    }
});
