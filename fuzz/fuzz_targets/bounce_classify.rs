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
    // A reply line (real ones are a few hundred bytes); longer inputs only make the lazy DFA build
    // more states under the instrumentation.
    let data = &data[..data.len().min(256)];
    let text = String::from_utf8_lossy(data);
    let c = classifier();
    let d = Diagnostic::from_line(&text);
    assert_eq!(c.classify(&d), c.classify(&d));
});
