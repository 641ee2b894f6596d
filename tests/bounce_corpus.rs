//! Accuracy of report parsing and classification against the Sisimai corpus.
//!
//! Runs every message of `tests/data/sisimai/maildir/{bsd,dos,mac}` (LF, CRLF and CR line ends) through
//! [`vmta::bounce::report::parse`] and compares each recipient's reason with `expectations.tsv`
//! (Sisimai's answers; `dos/` and `mac/` copies share the `bsd/` rows). Sisimai's older names count as
//! their successors: `speeding` and `toomanyconn` as `ratelimited`, `exceedlimit` as `mesgtoobig`; an
//! ARF report's recipients count as `feedback` and an auto-reply's as `vacation`.
//!
//! Prints per-reason precision and recall and the overall agreement, and fails if agreement drops
//! below [`MIN_AGREEMENT`] (the level reached when this test was written) or if any file panics.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use vmta::bounce::Classifier;
use vmta::bounce::report::{self, ReportKind};

/// Rows (with an expectation) whose reason must agree, as a fraction.
const MIN_AGREEMENT: f64 = 0.90;

fn canonical(reason: &str) -> String {
    match reason {
        "speeding" | "toomanyconn" => "ratelimited".into(),
        "exceedlimit" => "mesgtoobig".into(),
        r => r.to_string(),
    }
}

#[test]
fn sisimai_corpus_agreement() {
    let data = vmta_tests::data_dir().join("sisimai");
    let tsv = std::fs::read_to_string(data.join("expectations.tsv")).expect("expectations.tsv");
    // name (without directory) -> rcpt_index -> reason
    let mut expected: HashMap<String, BTreeMap<usize, String>> = HashMap::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 || cols[2].is_empty() {
            continue;
        }
        let name = Path::new(cols[0])
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let idx: usize = cols[1].parse().expect("rcpt_index");
        expected
            .entry(name)
            .or_default()
            .insert(idx, canonical(cols[2]));
    }
    let classifier = Classifier::default_rules();
    let mut rows = 0usize;
    let mut agree = 0usize;
    // reason -> (true positives, predicted, expected)
    let mut stats: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut misses: Vec<String> = Vec::new();
    let verbose = std::env::var_os("VMTA_CORPUS_VERBOSE").is_some();
    for dir in ["bsd", "dos", "mac"] {
        let mut files: Vec<_> = std::fs::read_dir(data.join("maildir").join(dir))
            .expect("corpus dir")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            let parsed = report::parse(&bytes, &classifier);
            let Some(want) = expected.get(&name) else {
                continue;
            };
            let got: Vec<String> = match &parsed {
                Ok(r) => r
                    .recipients
                    .iter()
                    .map(|x| match r.kind {
                        ReportKind::Arf => "feedback".to_string(),
                        ReportKind::AutoReply => "vacation".to_string(),
                        _ => x.reason.as_str().to_string(),
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            for (&idx, want_reason) in want {
                rows += 1;
                let got_reason = got.get(idx - 1).cloned().unwrap_or_else(|| "(none)".into());
                stats.entry(want_reason.clone()).or_default().2 += 1;
                stats.entry(got_reason.clone()).or_default().1 += 1;
                if &got_reason == want_reason {
                    agree += 1;
                    stats.entry(want_reason.clone()).or_default().0 += 1;
                } else {
                    let diag = parsed
                        .as_ref()
                        .ok()
                        .and_then(|r| r.recipients.get(idx - 1))
                        .map(|x| {
                            format!(
                                "{} | {:?} {:?} {:?} | {}",
                                x.address,
                                x.reply_code,
                                x.status.map(|s| s.to_string()),
                                x.phase,
                                x.diagnostic.chars().take(200).collect::<String>()
                            )
                        })
                        .unwrap_or_default();
                    misses.push(format!(
                        "{dir}/{name}#{idx}: want {want_reason} got {got_reason} :: {diag}"
                    ));
                }
            }
        }
    }
    println!(
        "{:<16} {:>9} {:>9} {:>6} {:>6}",
        "reason", "precision", "recall", "rows", "found"
    );
    for (reason, (tp, predicted, expected)) in &stats {
        if *expected == 0 && *predicted == 0 {
            continue;
        }
        let p = if *predicted > 0 {
            *tp as f64 / *predicted as f64
        } else {
            0.0
        };
        let r = if *expected > 0 {
            *tp as f64 / *expected as f64
        } else {
            0.0
        };
        println!(
            "{reason:<16} {:>8.1}% {:>8.1}% {expected:>6} {predicted:>6}",
            p * 100.0,
            r * 100.0
        );
    }
    let agreement = agree as f64 / rows as f64;
    println!("agreement: {agree}/{rows} = {:.2}%", agreement * 100.0);
    if verbose {
        for m in &misses {
            println!("MISS {m}");
        }
    }
    assert!(rows > 800, "the corpus is incomplete: {rows} rows");
    assert!(
        agreement >= MIN_AGREEMENT,
        "agreement {:.2}% fell below {:.2}%; run with VMTA_CORPUS_VERBOSE=1 -- --nocapture to list the misses",
        agreement * 100.0,
        MIN_AGREEMENT * 100.0
    );
}

/// Replies of real greylisting servers get the reason `greylisted` and its short schedule; the
/// look-alikes in the same file (a full disk's "try again later", a volume deferral) keep theirs
/// (`tests/data/greylisting/replies.tsv`).
#[test]
fn greylisting_replies_of_real_servers() {
    let path = vmta_tests::data_dir().join("greylisting/replies.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Classifier::default_rules();
    let mut checked = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut cols = line.splitn(3, '\t');
        let (want, source, reply) = (
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
        );
        let got = c.classify(&vmta::bounce::Diagnostic::from_line(reply));
        assert_eq!(got.reason.as_str(), want, "{source}: {reply}");
        if want == "greylisted" {
            assert_eq!(got.retry_after_s(), Some(300), "{source}: {reply}");
            assert!(!got.throttle, "{source}: greylisting is not a rate limit");
        }
        checked += 1;
    }
    assert!(checked >= 12, "{checked} rows");
    // Each retry of a greylisted recipient waits longer: 5, 10, 20 minutes...
    let grey = c.classify(&vmta::bounce::Diagnostic::from_line(
        "451 4.7.1 Greylisting in action, please come back in 00:05:00",
    ));
    let policy = vmta::bounce::RetrySchedule::default();
    let secs = |attempt| policy.interval(&grey, attempt).unwrap().as_secs();
    assert_eq!((secs(1), secs(2), secs(3)), (300, 600, 1200));
}
