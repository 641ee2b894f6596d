//! `vmta queue DIR`: what a spool directory (one shard's, `SPOOL/shard-N`, or the whole `SPOOL`)
//! holds, for the people operating it: a summary (messages, recipients, by state and by destination
//! domain, oldest message, disk used), a listing of queued recipients, and removal of a message.
//!
//! Reading takes the spool's shared lock and is refused while an engine has the spool open (an engine
//! holds the exclusive lock); removing needs the exclusive lock, so stop the engine first.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vmta::spool::{MessageId, Options, RecipientState, Spool};

/// Arguments of `vmta queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// A shard's spool directory, or an engine's spool directory holding `shard-N` directories.
    dir: PathBuf,
    /// List every queued recipient.
    #[arg(long)]
    list: bool,
    /// Remove (cancel) the message with this id (16 hex digits, as listed).
    #[arg(long)]
    remove: Option<String>,
}

/// Runs `vmta queue`.
pub fn run(args: QueueArgs) -> ExitCode {
    let dirs = shard_dirs(&args.dir);
    if dirs.is_empty() {
        eprintln!("vmta queue: {}: no spool there", args.dir.display());
        return ExitCode::from(2);
    }
    let mut status = ExitCode::SUCCESS;
    let mut removed = false;
    for dir in dirs {
        let result = match &args.remove {
            Some(id) => remove(&dir, id).map(|r| removed |= r),
            None => show(&dir, args.list),
        };
        if let Err(e) = result {
            eprintln!("vmta queue: {}: {e}", dir.display());
            status = ExitCode::from(1);
        }
    }
    if let Some(id) = &args.remove
        && !removed
        && status == ExitCode::SUCCESS
    {
        eprintln!("vmta queue: no queued message {id}");
        status = ExitCode::from(1);
    }
    status
}

/// The shard directories under `dir`, or `dir` itself when it is one.
fn shard_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("shard-"))
                })
                .collect()
        })
        .unwrap_or_default();
    shards.sort();
    if shards.is_empty() && dir.is_dir() {
        shards.push(dir.to_path_buf());
    }
    shards
}

fn show(dir: &Path, list: bool) -> Result<(), String> {
    let opts = Options {
        read_only: true,
        ..Options::default()
    };
    let (spool, report) = Spool::open(dir, opts).map_err(|e| e.to_string())?;
    let s = spool.stats();
    println!("spool {}", dir.display());
    println!("  messages:    {}", s.messages);
    println!("  recipients:  {}", s.recipients);
    for state in RecipientState::ALL {
        let n = s.by_state[state as usize];
        if n > 0 {
            println!("    {:<10} {n}", state.as_str());
        }
    }
    if let Some(oldest) = s.oldest_submitted {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        println!(
            "  oldest:      submitted {} s ago",
            now.saturating_sub(oldest)
        );
    }
    println!(
        "  disk:        {} bytes in {} segments ({} bytes of records)",
        s.disk_bytes, s.segments, s.used_bytes
    );
    if report.corrupt_records > 0 || report.truncated_bytes > 0 || report.damaged_segments > 0 {
        println!(
            "  damage:      {} corrupt stretches skipped, {} torn bytes, {} damaged segments",
            report.corrupt_records, report.truncated_bytes, report.damaged_segments
        );
    }
    let mut domains = spool.domains();
    domains.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("  by domain:");
    for (d, n) in domains.iter().filter(|(_, n)| *n > 0) {
        println!("    {d:<40} {n}");
    }
    if list {
        println!("  queued:");
        for q in spool.queued() {
            let Ok(r) = spool.recipient(q.id) else {
                continue;
            };
            println!(
                "    {} {:<9} attempts {:<3} next {:<10} {} {}",
                q.id,
                q.state.as_str(),
                q.attempts,
                q.next_attempt,
                r.address,
                r.last_reply
            );
        }
    }
    Ok(())
}

/// Removes the message from this spool; false when it is not there.
fn remove(dir: &Path, id: &str) -> Result<bool, String> {
    let id: MessageId = id
        .parse()
        .map_err(|_| format!("{id:?} is not a message id (16 hex digits)"))?;
    let (mut spool, _) = Spool::open(dir, Options::default()).map_err(|e| e.to_string())?;
    match spool.remove(id) {
        Ok(t) => {
            spool.commit(t).map_err(|e| e.to_string())?;
            println!("removed {id} from {}", dir.display());
            Ok(true)
        }
        Err(vmta::spool::SpoolError::UnknownMessage(_)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}
