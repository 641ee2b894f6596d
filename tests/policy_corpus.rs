//! Submission validation over real-world messages (the Sisimai corpus in `tests/data/sisimai`, mail
//! written by dozens of MTAs, with bare LF, CRLF and CR line endings): what it accepts comes out
//! normalised, validates again to the same bytes and signs; what it refuses is refused for a reason
//! that is really in the message, at a line that exists.

use vmta::dkim::{Signer, SignerConfig, SigningKey};
use vmta::policy::{MessageError, Stamp, ValidationOptions, validate};
use vmta_tests::data_dir;

fn messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["bsd", "dos", "mac"] {
        let dir = data_dir().join("sisimai/maildir").join(sub);
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            out.push((
                format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    out
}

fn lines(bytes: &[u8]) -> usize {
    // Every CRLF, bare CR or bare LF ends a line.
    let mut n = 1;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            n += 1;
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else if bytes[i] == b'\n' {
            n += 1;
        }
        i += 1;
    }
    n
}

#[test]
fn real_messages_validate_idempotently_or_are_refused_for_real_reasons() {
    let stamp = Stamp {
        now: 1_790_000_000,
        unique_id: "corpus",
        trace: None,
    };
    let options = ValidationOptions::default();
    let signer = Signer::new(
        SigningKey::ed25519_from_seed(&[3; 32]),
        SignerConfig::new("example.com", "s").with_oversigning(),
    )
    .unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for (name, raw) in messages() {
        match validate(&raw, &options, &stamp) {
            Ok(m) => {
                accepted += 1;
                for line in m.bytes.split(|&b| b == b'\n') {
                    assert!(line.len() <= 999, "{name}: long line kept");
                    assert!(
                        !line[..line.len().saturating_sub(1)].contains(&b'\r'),
                        "{name}: bare CR kept"
                    );
                }
                assert!(m.bytes.ends_with(b"\r\n"), "{name}");
                assert!(!m.from.is_empty(), "{name}");
                let again = validate(&m.bytes, &options, &stamp)
                    .unwrap_or_else(|e| panic!("{name}: output refused: {e}"));
                assert_eq!(again.bytes, m.bytes, "{name}: not idempotent");
                assert!(!again.added_date && !again.added_message_id, "{name}");
                assert_eq!(again.from, m.from, "{name}");
                signer.sign(&m.bytes, 0).unwrap();
            }
            Err(e) => {
                refused += 1;
                let text = String::from_utf8_lossy(&raw);
                let total = lines(&raw);
                match &e {
                    MessageError::MboxSeparator => assert!(text.starts_with("From "), "{name}"),
                    MessageError::LineTooLong { line, length } => {
                        assert!(*line <= total && *length > 998, "{name}: {e}")
                    }
                    MessageError::BadFrom { line, .. }
                    | MessageError::NulByte { line }
                    | MessageError::Duplicate { line, .. }
                    | MessageError::BadFieldName { line }
                    | MessageError::NotAHeaderField { line }
                    | MessageError::ContinuationFirst { line } => {
                        assert!(*line >= 1 && *line <= total, "{name}: {e}")
                    }
                    MessageError::MissingFrom => {
                        let header = text.split("\n\n").next().unwrap_or("");
                        assert!(
                            !header
                                .lines()
                                .any(|l| l.to_ascii_lowercase().starts_with("from:")),
                            "{name}: has a From field"
                        );
                    }
                    other => panic!("{name}: unexpected refusal {other}"),
                }
                if let MessageError::NulByte { .. } = e {
                    assert!(raw.contains(&0), "{name}");
                }
            }
        }
    }
    println!("accepted {accepted}, refused {refused}");
    // Most of the corpus is well-formed mail; the refusals are mbox separators, empty or
    // unqualified From addresses (`<>`, `MAILER-DAEMON`), over-long lines, a NUL, duplicate fields.
    assert!(accepted > 600, "accepted {accepted}, refused {refused}");
    assert!(refused > 50, "accepted {accepted}, refused {refused}");
}
