//! `vmta queue` on a real spool: summary, listing, removal, and refusal while the spool is in use.

use std::process::Command;
use vmta::spool::{
    Envelope, MessageFlags, Options, Priority, RecipientId, RecipientState, Spool, StateChange,
    SyncPolicy,
};
use vmta_tests::TempDir;

fn vmta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmta"))
}

fn spool_with_mail(dir: &std::path::Path) -> Vec<vmta::spool::MessageId> {
    let opts = Options {
        policy: SyncPolicy::None,
        ..Options::default()
    };
    let (mut spool, _) = Spool::open(dir, opts).unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let a = format!("a{n}@one.test");
        let b = format!("b{n}@two.test");
        let rcpts = [a.as_str(), b.as_str()];
        let env = Envelope {
            sender: "s@x.test",
            recipients: &rcpts,
            tenant: "t",
            tags: &[],
            priority: Priority::Bulk,
            flags: MessageFlags::default(),
            submitted_at: 1_700_000_000,
        };
        ids.push(spool.submit(&env, b"Subject: q\r\n\r\nbody\r\n").unwrap());
    }
    let change = StateChange {
        state: RecipientState::Deferred,
        attempts: 1,
        next_attempt: 1_700_000_900,
        reply: "451 4.7.1 greylisted",
    };
    spool
        .update(
            RecipientId {
                message: ids[0],
                index: 1,
            },
            &change,
        )
        .unwrap();
    spool.flush().unwrap();
    ids
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = vmta().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn summary_listing_and_removal() {
    let dir = TempDir::new("cli-queue");
    let ids = spool_with_mail(dir.path());
    let path = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["queue", path]);
    assert_eq!(code, 0, "{err}");
    let has = |out: &str, words: &[&str]| {
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == words)
    };
    assert!(has(&out, &["messages", "3"]), "{out}");
    assert!(has(&out, &["recipients", "6", "live"]), "{out}");
    assert!(has(&out, &["queued", "5"]), "{out}");
    assert!(has(&out, &["deferred", "1"]), "{out}");
    assert!(has(&out, &["3", "one.test"]), "{out}");
    let (_, out, _) = run(&["queue", path, "--list"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("b0@two.test=deferred"), "{out}");
    let id = ids[1].to_string();
    let (code, out, err) = run(&["queue", path, "--remove", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("removed {id}")), "{out}");
    let (_, out, _) = run(&["queue", path]);
    assert!(has(&out, &["messages", "2"]), "{out}");
    let (code, _, err) = run(&["queue", path, "--remove", "00000000000000ff"]);
    assert_eq!(code, 1);
    assert!(err.contains("00000000000000ff"), "{err}");
}

#[test]
fn refuses_while_an_engine_holds_the_spool() {
    let dir = TempDir::new("cli-queue-locked");
    spool_with_mail(dir.path());
    let (_held, _) = Spool::open(dir.path(), Options::default()).unwrap();
    let (code, _, err) = run(&["queue", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
}
