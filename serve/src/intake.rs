//! Intake: the threads that hand finished messages to the engine.
//!
//! A listener thread must never wait for the spool, so a message whose data is complete becomes a
//! [`Job`] on a bounded queue. An intake thread takes every job waiting (up to [`BATCH`]), submits
//! them with one `Engine::submit_batch` (one group commit covers them all), and posts each answer
//! back to the listener thread that owns the connection, waking it. The queue being full is answered
//! `451 4.3.0` at once: the client keeps the message and retries.

use crate::log::EventLog;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use vmta::engine::{Engine, Submission, SubmitError};

/// The most messages one intake thread submits at once.
pub const BATCH: usize = 256;

/// Where an answer goes: the listener thread, the connection's slot and its generation (a slot
/// reused by a later connection has another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The listener thread.
    pub thread: usize,
    /// The connection's slot.
    pub slot: usize,
    /// The connection's generation.
    pub generation: u64,
}

/// A message to submit.
#[derive(Debug)]
pub struct Job {
    /// The submission.
    pub submission: Submission,
    /// Who waits for the answer.
    pub reply_to: ReplyTo,
    /// The client's EHLO/HELO name and address, the listener, for the log.
    pub client: IpAddr,
    /// The listener's address, for the log.
    pub listener: String,
}

/// An answer for a listener thread's connection.
#[derive(Debug)]
pub struct Done {
    /// The connection.
    pub reply_to: ReplyTo,
    /// What it answers.
    pub answer: Answer,
    /// Not to be given before this instant (a failed login's delay).
    pub not_before: Option<std::time::Instant>,
}

/// What a [`Done`] answers.
#[derive(Debug)]
pub enum Answer {
    /// A message: the queue id, or why the engine refused it.
    Message(Result<u64, SubmitError>),
    /// A login: the tenant when the password was right; whether the address is now refused.
    Auth {
        /// The identity that tried.
        identity: String,
        /// Its tenant, if the password was right.
        tenant: Option<String>,
        /// The address has failed too often and is refused for a while.
        locked: bool,
    },
}

/// The answers waiting for one listener thread, and how to wake it.
#[derive(Debug)]
pub struct Mailbox {
    /// The answers.
    pub done: Mutex<Vec<Done>>,
    /// Wakes the thread's poll.
    pub waker: mio::Waker,
}

impl Mailbox {
    /// Hands answers over and wakes the thread.
    pub fn post(&self, items: &mut Vec<Done>) {
        if items.is_empty() {
            return;
        }
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(items);
        let _ = self.waker.wake();
    }
}

/// Runs one intake thread until every sender of `jobs` is gone.
pub fn run(
    engine: Arc<Engine>,
    jobs: crossbeam::channel::Receiver<Job>,
    mailboxes: Arc<Vec<Mailbox>>,
    log: Arc<EventLog>,
    stats: Arc<crate::stats::Stats>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut submissions: Vec<Submission> = Vec::with_capacity(BATCH);
    let mut per_thread: Vec<Vec<Done>> = (0..mailboxes.len()).map(|_| Vec::new()).collect();
    let mut lines: Vec<String> = Vec::with_capacity(BATCH);
    let enabled = log.is_enabled();
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        submissions.extend(batch.iter_mut().map(|j| std::mem::take(&mut j.submission)));
        let results = engine.submit_batch(&submissions);
        let mut counts: Vec<(String, u64, u64)> = Vec::new();
        for ((job, s), result) in batch.drain(..).zip(submissions.drain(..)).zip(results) {
            let ok = u64::from(result.is_ok());
            match counts.iter_mut().find(|c| c.0 == job.listener) {
                Some(c) => {
                    c.1 += ok;
                    c.2 += 1 - ok;
                }
                None => counts.push((job.listener.clone(), ok, 1 - ok)),
            }
            if enabled {
                lines.push(log_line(job.client, &job.listener, &s, &result));
            }
            per_thread[job.reply_to.thread].push(Done {
                reply_to: job.reply_to,
                answer: Answer::Message(result),
                not_before: None,
            });
        }
        // Logged before the answers go out: a message's "received" line comes before anything
        // that follows from it.
        log.write_lines(lines.iter().map(String::as_str));
        lines.clear();
        for (l, received, refused) in counts {
            stats.listener_messages(&l, received, refused);
        }
        for (t, items) in per_thread.iter_mut().enumerate() {
            mailboxes[t].post(items);
        }
    }
}

/// The event log's `received` or `refused` line for a submission from `client` on `listener`.
pub fn log_line(
    client: IpAddr,
    listener: &str,
    s: &Submission,
    result: &Result<u64, SubmitError>,
) -> String {
    let (event, id, error) = match result {
        Ok(id) => ("received", Some(format!("{id:016x}")), None),
        Err(e) => ("refused", None, Some(e.to_string())),
    };
    serde_json::json!({
        "event": event,
        "message_id": id,
        "error": error,
        "sender": s.sender,
        "recipients": s.recipients.len(),
        "size": s.body.len(),
        "tenant": s.tenant,
        "client_ip": client.to_string(),
        "helo": s.client_host,
        "protocol": s.protocol,
        "auth": (!s.auth.is_empty()).then_some(&s.auth),
        "listener": listener,
    })
    .to_string()
}
