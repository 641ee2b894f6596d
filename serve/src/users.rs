//! Submission users (RFC 4954, RFC 6409): who may log in, with which password, for which tenant;
//! password hashes (argon2id, PHC strings); the verifier thread; and the brute-force limiter.
//!
//! ```toml
//! [[user]]
//! name = "demo"                    # the AUTH identity
//! password = "$argon2id$v=19$..."  # `vmta passwd` prints it; never the password itself
//! tenant = "demo"                  # the engine tenant whose policies apply to this login
//! ```
//!
//! Checking a password costs tens of milliseconds by design (argon2), so it never runs on a
//! listener thread: an AUTH becomes a job for the verifier thread, which answers through the
//! listener thread's mailbox. An unknown name costs the same as a wrong password (a dummy hash is
//! checked), so the time taken does not say which names exist.
//!
//! Brute force (Postfix's anvil and `smtpd_client_auth_rate_limit` are the model): every failure
//! from a client address counts; past `[serve] auth_failures_free` the answer to each further
//! failure is held back longer (0.5 s more each, at most 5 s); at `auth_failures_max` the address
//! is refused (`421 4.7.0`, at AUTH and at connect) for `auth_lockout_s`. A success clears the
//! address's count. Counts are in memory: a restart forgets them.

use crate::intake::{Answer, Done, Mailbox, ReplyTo};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `[[user]]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The AUTH identity.
    pub name: String,
    /// The argon2 PHC string.
    pub password: String,
    /// The tenant.
    pub tenant: String,
}

/// The users, by name; replaced whole by a reload ([`Users::replace`]), logins under way finish
/// against the table they started with.
#[derive(Debug, Default)]
pub struct Users {
    by_name: std::sync::RwLock<Arc<HashMap<String, UserConfig>>>,
    /// Checked for unknown names, so they cost what a wrong password costs.
    dummy: String,
}

/// Checks every hash's format; a name may appear once.
fn table(users: Vec<UserConfig>) -> Result<HashMap<String, UserConfig>, String> {
    let mut by_name = HashMap::new();
    for (i, u) in users.into_iter().enumerate() {
        if u.name.is_empty() || u.tenant.is_empty() {
            return Err(format!("user[{i}]: name and tenant must not be empty"));
        }
        PasswordHash::new(&u.password).map_err(|e| {
            format!("user[{i}].password: not a password hash from `vmta passwd` ({e})")
        })?;
        if by_name.insert(u.name.clone(), u).is_some() {
            return Err(format!("user[{i}].name: a second user of that name"));
        }
    }
    Ok(by_name)
}

/// A checked set of users, ready to put in force with [`Users::replace`].
#[derive(Debug)]
pub struct UserTable(HashMap<String, UserConfig>);

impl UserTable {
    /// Checks every hash's format; a name may appear once.
    pub fn new(users: Vec<UserConfig>) -> Result<UserTable, String> {
        table(users).map(UserTable)
    }
}

impl Users {
    /// Checks every hash's format; a name may appear once.
    pub fn new(users: Vec<UserConfig>) -> Result<Users, String> {
        let by_name = table(users)?;
        let dummy = hash_password("not a password anybody has").map_err(|e| e.to_string())?;
        Ok(Users {
            by_name: std::sync::RwLock::new(Arc::new(by_name)),
            dummy,
        })
    }

    /// Puts a new set of users in force for the next login.
    pub fn replace(&self, users: UserTable) {
        *self.by_name.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users.0);
    }

    /// The tenant of `name` if `password` is its password.
    pub fn verify(&self, name: &str, password: &str) -> Option<String> {
        let by_name = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (phc, user) = match by_name.get(name) {
            Some(u) => (u.password.as_str(), Some(u)),
            None => (self.dummy.as_str(), None),
        };
        let hash = PasswordHash::new(phc).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        user.filter(|_| ok).map(|u| u.tenant.clone())
    }
}

/// An argon2id hash of `password` with a fresh random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("cannot read random bytes: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The brute-force limits (`[serve]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures answered at once.
    pub free: u32,
    /// Failures after which the address is refused.
    pub max: u32,
    /// How long a refused address stays refused.
    pub lockout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins per client address.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    by_ip: Mutex<HashMap<IpAddr, Record>>,
}

impl Limiter {
    /// An empty limiter.
    pub fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Record>> {
        self.by_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` is refused now.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock()
            .get(&ip)
            .and_then(|r| r.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failure; the delay before answering it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut map = self.lock();
        // Forget addresses quiet for longer than a lockout, so the map stays small.
        if map.len() > 10_000 {
            let lockout = self.limits.lockout;
            map.retain(|_, r| now.duration_since(r.last) < lockout);
        }
        let r = map.entry(ip).or_insert(Record {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if r.locked_until.is_some_and(|until| now >= until) {
            r.failures = 0;
            r.locked_until = None;
        }
        r.failures += 1;
        r.last = now;
        if r.failures >= self.limits.max {
            r.locked_until = Some(now + self.limits.lockout);
        }
        let over = r.failures.saturating_sub(self.limits.free);
        Duration::from_millis(500 * u64::from(over)).min(Duration::from_secs(5))
    }

    /// A success: the address starts over.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

/// An AUTH to check.
#[derive(Debug)]
pub struct AuthJob {
    /// Who waits.
    pub reply_to: ReplyTo,
    /// The client's address.
    pub client: IpAddr,
    /// The identity.
    pub identity: String,
    /// The password.
    pub password: String,
}

/// Runs the verifier until every sender of `jobs` is gone.
pub fn run_verifier(
    jobs: crossbeam::channel::Receiver<AuthJob>,
    users: Arc<Users>,
    limiter: Arc<Limiter>,
    mailboxes: Arc<Vec<Mailbox>>,
) {
    while let Ok(job) = jobs.recv() {
        let now = Instant::now();
        let tenant = users.verify(&job.identity, &job.password);
        let not_before = match &tenant {
            Some(_) => {
                limiter.succeeded(job.client);
                None
            }
            None => {
                let delay = limiter.failed(job.client, now);
                (!delay.is_zero()).then(|| now + delay)
            }
        };
        let locked = tenant.is_none() && limiter.is_locked(job.client, now);
        mailboxes[job.reply_to.thread].post(&mut vec![Done {
            reply_to: job.reply_to,
            answer: Answer::Auth {
                identity: job.identity,
                tenant,
                locked,
            },
            not_before,
        }]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_unknown_names_fail() {
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        let users = Users::new(vec![UserConfig {
            name: "demo".into(),
            password: phc,
            tenant: "t".into(),
        }])
        .unwrap();
        assert_eq!(users.verify("demo", "s3cret").as_deref(), Some("t"));
        assert_eq!(users.verify("demo", "wrong"), None);
        assert_eq!(users.verify("nobody", "s3cret"), None);
        let bad = Users::new(vec![UserConfig {
            name: "x".into(),
            password: "plaintext".into(),
            tenant: "t".into(),
        }]);
        assert!(bad.unwrap_err().contains("user[0].password"));
    }

    #[test]
    fn failures_slow_down_then_lock_out() {
        let l = Limiter::new(Limits {
            free: 3,
            max: 10,
            lockout: Duration::from_secs(600),
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        let delays: Vec<u64> = (0..10)
            .map(|_| l.failed(ip, t).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 0, 500, 1000, 1500, 2000, 2500, 3000, 3500]);
        assert!(l.is_locked(ip, t));
        assert!(!l.is_locked("192.0.2.2".parse().unwrap(), t));
        assert!(!l.is_locked(ip, t + Duration::from_secs(601)));
        l.succeeded(ip);
        assert!(!l.is_locked(ip, t));
    }
}
