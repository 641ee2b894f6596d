//! `vmta serve` as the daemon tests run it: started with a ready file next to its configuration,
//! waited for, killed and reaped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `vmta serve`.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Child,
}

impl Daemon {
    /// Starts `vmta` (the binary at `bin`) as `vmta serve --config CONFIG --ready-file DIR/ready` and
    /// waits up to 30 s for the ready file; a daemon that exits first fails the test with its stderr.
    pub fn start(bin: &Path, config: &Path) -> Daemon {
        let ready = config.with_file_name("ready");
        let _ = std::fs::remove_file(&ready);
        let err_path = config.with_file_name("serve.stderr");
        let err_file = std::fs::File::create(&err_path).expect("create the stderr file");
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .expect("vmta serve starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(status) = child.try_wait().expect("wait") {
                let err = std::fs::read_to_string(&err_path).unwrap_or_default();
                panic!("vmta serve exited early ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "vmta serve not ready after 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds, failing the test after `timeout` with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `python3 -c SCRIPT ARGS...`: whether it succeeded, and its stdout and stderr.
pub fn python(script: &str, args: &[String]) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Like [`python`], failing the test when the script fails; its output.
pub fn python_ok(script: &str, args: &[String]) -> String {
    let (ok, text) = python(script, args);
    assert!(ok, "python: {text}");
    text
}

/// Writes `localhost.crt` and `localhost.key` into `dir` with `examples/serve/make-cert.sh`.
pub fn make_cert(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serve/make-cert.sh");
    let ok = std::process::Command::new(script)
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("make-cert.sh runs")
        .success();
    assert!(ok, "make-cert.sh failed");
}
