//! Report parsing fed arbitrary bytes: it must never panic, whatever the line endings, MIME structure
//! or encodings, a parse must be deterministic, and diagnostics stay within their bound.
//!
//! The parser is given a small rule set (a code rule, a status rule and one short text rule) so that
//! each recipient is still classified, cheaply: under the fuzzer's instrumentation the default rules'
//! lazy DFA made this target run about five inputs a second. The default rules themselves are fuzzed
//! by `bounce_classify`, on reply-sized inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vmta::bounce::{Classifier, report};

const RULES: &str = r#"
[[rule]]
name = "success"
reason = "delivered"
code = ["2xx"]

[[rule]]
name = "unknown"
reason = "userunknown"
status = ["5.1.1"]

[[rule]]
name = "full"
reason = "mailboxfull"
text = '''mailbox (is )?full'''
"#;

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::from_toml(RULES).expect("the target's rules compile"))
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
});
