//! `vmta queue DIR`: inspect and operate a spool directory.
//!
//! Without options it prints a summary (messages, recipients by state and by destination domain, the
//! oldest message, disk use, what recovery found). `--list` prints one line per queued message;
//! `--remove ID` cancels every live recipient of a message and frees its space. The summary and the
//! list open the spool read-only and refuse to run while an engine has it open (the lock says so).
//!
//! While a `vmta serve` holds the spool, `--remove` goes through the daemon instead (its control
//! socket, `vmta.sock` in the spool directory or its parent): the engine cancels the message, with
//! a `cancelled` event per recipient. ID is then the queue id of the `250` reply and the events
//! (the engine's id); without a daemon it is the spool's id, as `--list` prints it.

use std::path::Path;
use std::process::ExitCode;
use vmta::spool::{MessageId, Options, RecipientId, RecipientState, Spool, SpoolError, SyncPolicy};

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Runs the command.
pub fn run(dir: &Path, list: bool, remove: Option<&str>) -> ExitCode {
    match run_inner(dir, list, remove) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmta queue: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(
    dir: &Path,
    list: bool,
    remove: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(id) = remove {
        let text = id;
        let id: MessageId = id
            .parse()
            .map_err(|_| format!("{id:?} is not a message id (16 hex digits)"))?;
        let opened = Spool::open(
            dir,
            Options {
                policy: SyncPolicy::Sync,
                ..Options::default()
            },
        );
        let (mut spool, _) = match opened {
            Err(SpoolError::Locked { holder, .. }) => {
                return cancel_through_daemon(dir, text, holder);
            }
            other => other?,
        };
        let t = spool.remove(id)?;
        spool.commit(t)?;
        let m = spool.maintain()?;
        println!(
            "removed {id}; {} segment(s) deleted, {} bytes freed",
            m.deleted_segments, m.freed_bytes
        );
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let (spool, rep) = Spool::open(
        dir,
        Options {
            read_only: true,
            ..Options::default()
        },
    )?;
    if list {
        for id in spool.messages() {
            let m = spool.message(id)?;
            let mut states = Vec::new();
            for i in 0..m.recipient_count() {
                let r = spool.recipient(RecipientId {
                    message: id,
                    index: i,
                })?;
                states.push(format!("{}={}", r.address, r.state));
            }
            println!(
                "{id}  {}  {}  <{}>  {} bytes  {}",
                utc(m.submitted_at()),
                m.priority().as_str(),
                m.sender(),
                m.body().len(),
                states.join(" ")
            );
        }
        return Ok(());
    }
    let st = spool.stats();
    println!("spool      {}", dir.display());
    println!("messages   {}", st.messages);
    println!("recipients {} live", st.recipients);
    for s in RecipientState::ALL {
        let n = st.by_state[s as usize];
        if n > 0 {
            println!("  {:<10} {n}", s.as_str());
        }
    }
    match st.oldest_submitted {
        Some(t) => println!("oldest     {}", utc(t)),
        None => println!("oldest     -"),
    }
    println!(
        "disk       {} bytes in {} segment(s), {} bytes of records",
        st.disk_bytes, st.segments, st.used_bytes
    );
    println!(
        "index      {} bytes on the heap{}",
        st.index_bytes,
        if st.index_mapped {
            ", tables in mapped files"
        } else {
            ""
        }
    );
    if rep.corrupt_records + rep.truncated_bytes + rep.damaged_segments as u64 + rep.orphan_records
        > 0
    {
        println!(
            "damage     {} corrupt record(s) ({} bytes), {} torn bytes, {} damaged segment(s), {} orphan record(s)",
            rep.corrupt_records,
            rep.corrupt_bytes,
            rep.truncated_bytes,
            rep.damaged_segments,
            rep.orphan_records
        );
    }
    let domains = spool.domains();
    if !domains.is_empty() {
        println!("by domain");
        for (d, n) in domains.iter().take(25) {
            println!("  {n:>8}  {d}");
        }
        if domains.len() > 25 {
            println!("  ... and {} more domain(s)", domains.len() - 25);
        }
    }
    Ok(())
}

/// `--remove` while an engine holds the spool: asks the daemon beside it to cancel the message.
fn cancel_through_daemon(
    dir: &Path,
    id: &str,
    holder: Option<u32>,
) -> Result<(), Box<dyn std::error::Error>> {
    let socket = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(vmta_serve::control::socket_path)
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "{} is in use by {} and no vmta serve control socket is beside it; \
                 cancel through that engine",
                dir.display(),
                holder.map_or("another process".to_string(), |p| format!("process {p}"))
            )
        })?;
    let answer = vmta_serve::control::send(
        &socket,
        &serde_json::json!({"command": "cancel", "id": id}).to_string(),
    )?;
    if let Some(e) = answer.get("error") {
        return Err(e.as_str().unwrap_or_default().into());
    }
    let n = answer["cancelled"].as_u64().unwrap_or(0);
    if n == 0 {
        return Err(format!("the running engine has no live recipient of queue id {id}").into());
    }
    println!("cancelled {n} recipient(s) of {id} through the running engine");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
