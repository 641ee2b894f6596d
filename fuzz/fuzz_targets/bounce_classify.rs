//! Reply classification by the shipped rules fed arbitrary reply lines (as `vmta classify` reads them,
//! at most a reply's worth of text): it must never panic and must be deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vmta::bounce::{Classifier, Diagnostic};

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(Classifier::default_rules)
}

fuzz_target!(|data: &[u8]| {
    // Up to the 4 KiB of text the classifier reads (it cuts longer text itself).
    let data = &data[..data.len().min(4096)];
    let text = String::from_utf8_lossy(data);
    let c = classifier();
    let d = Diagnostic::from_line(&text);
    assert_eq!(c.classify(&d), c.classify(&d));
});
