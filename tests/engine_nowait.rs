//! `Engine::submit_nowait` racing `Engine::shutdown`: every id returned is accounted for, either in
//! the spool when the engine starts again or as a `refused` event (nothing handed over is dropped in
//! silence).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use vmta::engine::{DeliveryEvent, Engine, EventKind, Submission, SubmitError};
use vmta_tests::TempDir;

#[test]
fn every_id_returned_before_a_shutdown_is_queued_or_refused() {
    let spool = TempDir::new("engine-nowait-shutdown");
    let config = vmta::engine::EngineConfig::builder()
        .shards(2)
        .pin_shards(false)
        .spool_dir(spool.path())
        .spool_segment_mb(2)
        .nameservers(&["127.0.0.1:9"])
        .port(9)
        .durability(vmta::engine::config::Durability::Sync)
        // A small ring: submitters often wait for room, so shutdowns also land in that wait.
        .with(|c| c.engine.submission_queue = 16)
        .build();
    for round in 0..3 {
        let e = Arc::new(Engine::start(&config).unwrap());
        // Nothing leaves: what is queued stays in the spool.
        e.pause();
        let before = e.recovery().messages as usize;
        let submitter = {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for n in 0.. {
                    let s = Submission {
                        sender: "s@x.example".into(),
                        recipients: vec![format!("r{round}-{n}@d{}.example", n % 7)],
                        tenant: "t".into(),
                        body: format!("From: s@x.example\r\nSubject: {n}\r\n\r\nbody\r\n")
                            .into_bytes(),
                        ..Submission::default()
                    };
                    match e.submit_nowait(&s) {
                        Ok(id) => ids.push(id),
                        Err(SubmitError::ShuttingDown) => break,
                        Err(err) => panic!("{err}"),
                    }
                }
                ids
            })
        };
        std::thread::sleep(Duration::from_millis(50 + 40 * round));
        e.shutdown(Duration::from_secs(2));
        let ids = submitter.join().unwrap();
        assert!(!ids.is_empty());
        let mut events: Vec<DeliveryEvent> = Vec::new();
        e.poll_events(&mut events, 1_000_000);
        let refused: HashSet<u64> = events
            .iter()
            .filter(|ev| ev.kind == EventKind::Refused)
            .map(|ev| ev.message_id)
            .collect();
        assert!(refused.iter().all(|id| ids.contains(id)));
        drop(e);
        let again = Engine::start(&config).unwrap();
        again.pause();
        assert_eq!(
            again.recovery().messages as usize - before,
            ids.len() - refused.len(),
            "round {round}: {} ids, {} refused",
            ids.len(),
            refused.len()
        );
        again.shutdown(Duration::from_secs(2));
    }
}
