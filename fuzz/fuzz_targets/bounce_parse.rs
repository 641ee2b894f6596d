//! Report parsing and classification fed arbitrary bytes: they must never panic, whatever the line
//! endings, MIME structure or encodings, and a parse must be deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vmta::bounce::{Classifier, Diagnostic, report};

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(Classifier::default_rules)
}

fuzz_target!(|data: &[u8]| {
    let c = classifier();
    let a = report::parse(data, c);
    let b = report::parse(data, c);
    assert_eq!(a, b);
    if let Ok(r) = a {
        for rcpt in &r.recipients {
            assert!(rcpt.diagnostic.len() <= report::MAX_DIAGNOSTIC + 4);
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = c.classify(&Diagnostic::from_line(&text));
});
