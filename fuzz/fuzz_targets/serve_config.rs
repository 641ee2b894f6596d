//! `vmta serve`'s configuration parser fed arbitrary text (its own `[serve]`, `[[listener]]` and
//! `[[user]]`, `[http]` and `[[api_token]]` tables beside the engine's, blanked out for the engine's parser): it must never panic,
//! and a configuration it accepts has listeners whose limits are in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmta_serve::config::{MAX_MESSAGE_SIZE, ServeConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = ServeConfig::from_toml(text) {
        assert!(!c.listeners.is_empty() || c.http.is_some());
        if let Some(h) = &c.http {
            assert!(!h.tokens.is_empty());
            assert!(h.section.max_connections >= 1 && h.section.threads >= 1);
        }
        for l in &c.listeners {
            assert!(l.session.max_message_size <= MAX_MESSAGE_SIZE);
            assert!(l.session.max_line >= 512);
            assert!(l.max_connections >= 1);
        }
    }
});
