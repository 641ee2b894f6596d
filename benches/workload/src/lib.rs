//! What `vmta demo`, `vmta bench` and the benchmark peers (`benches/peers`) must agree on byte for
//! byte: the workload's message, and how a process's CPU time is read. One copy, so a peer can never
//! send a different message from the one vmta is measured with.

/// The body's repeated line.
const LINE: &[u8] = b"This is the vmta demo campaign. Nothing leaves this machine.\r\n";

/// Message number `i` to `to`: the demo campaign's 2 KiB message (headers, then filler lines up to
/// 2,048 bytes), CRLF line ends.
pub fn message(i: usize, to: &str) -> Vec<u8> {
    use std::io::Write as _;
    // Sized once: the header and the body lines fill 2 KiB plus at most one line.
    let mut m = Vec::with_capacity(2048 + LINE.len());
    let _ = write!(
        m,
        "From: News <news@sender.vmta.test>\r\nTo: <{to}>\r\nSubject: Demo message {i}\r\nMessage-ID: <{i}.demo@sender.vmta.test>\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    while m.len() < 2048 {
        m.extend_from_slice(LINE);
    }
    m
}

/// User and system CPU seconds of this process, every thread that ever ran included (`getrusage`);
/// NaN if the call fails.
pub fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer we pass, which points to memory we
    // own and that is large enough; RUSAGE_SELF is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage returned 0, so it initialised the struct.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_is_2_kib_of_crlf_lines_naming_its_recipient() {
        let m = super::message(7, "user7@d7.vmta.test");
        assert!((2048..2048 + 64).contains(&m.len()), "{}", m.len());
        let text = String::from_utf8(m).unwrap();
        assert!(text.contains("\r\nTo: <user7@d7.vmta.test>\r\n"));
        assert!(text.contains("Message-ID: <7.demo@sender.vmta.test>"));
        assert!(text.ends_with("\r\n"));
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::process_cpu_seconds();
        assert!(before.is_finite() && before >= 0.0, "{before}");
        // Busy until the clock moves (it counts microseconds); a shared machine may take a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        while super::process_cpu_seconds() <= before && std::time::Instant::now() < deadline {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        assert!(super::process_cpu_seconds() > before);
    }
}
