//! Shaping rule files from arbitrary text: parsing returns a rule set or a named error and never panics,
//! and whatever parses can be resolved, shown and used for decisions without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmta::shaping::{Nanos, RuleSet, Shaper, ShapingShared, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = RuleSet::from_toml(text) else {
        return;
    };
    for (domain, mx) in [
        ("gmail.com", "aspmx.l.google.com"),
        ("example.com", "mx.example.com"),
        ("", ""),
    ] {
        let _ = rules.resolve(domain, mx);
        let _ = Snapshot::configured(&rules, domain, Some(mx), Some("192.0.2.1"), 1_800_000_000)
            .to_string();
    }
    let names: Vec<String> = rules.sources.iter().map(|s| s.name.clone()).collect();
    let mut shaper = Shaper::new(ShapingShared::new(rules, 2, 1_800_000_000));
    for name in names.iter().map(String::as_str).chain(["192.0.2.1"]) {
        let src = shaper.source(name);
        let route = shaper.route(src, "example.com", "mx.example.com", Nanos(0));
        for t in [0u64, 1, 1_000_000_000, 86_400_000_000_000, u64::MAX / 2] {
            if let Ok(mut p) = shaper.may_connect(route, Nanos(t)) {
                let _ = shaper.may_send(&mut p, Nanos(t));
            }
        }
        let _ = shaper.snapshot(route, Nanos(u64::MAX / 2)).to_string();
    }
});
