//! `vmta_config`: an engine configuration, from TOML text, a TOML file or the defaults, with the main
//! options settable one by one. Every option of the TOML form is described in `docs/ffi.md` and in
//! the engine's configuration module; values are checked when the engine starts, where a
//! `vmta_error` names the key at fault.

use super::boundary::{Registry, guard_result, out, text, write};
use super::error::{report, vmta_error};
use super::result::*;
use std::sync::{Arc, Mutex};
use vmta::engine::EngineConfig;
use vmta::engine::config::{Durability, SmarthostConfig, TlsPolicy};

/// A configuration being built; `vmta_engine_new` reads it (and copies it).
#[derive(Debug)]
pub struct vmta_config {
    _opaque: [u8; 0],
}

pub(crate) static CONFIGS: Registry<Mutex<EngineConfig>> = Registry::new();

/// Longest TOML text, file name or option value accepted (1 MiB).
pub const VMTA_MAX_CONFIG_SIZE: usize = 1048576;

/// `durability = "sync"`: fdatasync before a submission returns (group commit).
pub const VMTA_DURABILITY_SYNC: u32 = 0;
/// `durability = "interval"`: write before returning, flush periodically.
pub const VMTA_DURABILITY_INTERVAL: u32 = 1;
/// `durability = "none"`: never flush (tests, benchmarks).
pub const VMTA_DURABILITY_NONE: u32 = 2;

/// `tls = "disabled"`.
pub const VMTA_TLS_DISABLED: u32 = 0;
/// `tls = "opportunistic"`: STARTTLS when offered, certificates not checked (RFC 7435).
pub const VMTA_TLS_OPPORTUNISTIC: u32 = 1;
/// `tls = "required"`: STARTTLS with a verified certificate.
pub const VMTA_TLS_REQUIRED: u32 = 2;

fn tls_policy(tls: u32) -> Result<TlsPolicy, vmta_result> {
    match tls {
        VMTA_TLS_DISABLED => Ok(TlsPolicy::Disabled),
        VMTA_TLS_OPPORTUNISTIC => Ok(TlsPolicy::Opportunistic),
        VMTA_TLS_REQUIRED => Ok(TlsPolicy::Required),
        _ => Err(VMTA_INVALID_ARGUMENT),
    }
}

fn register(config: EngineConfig) -> *mut vmta_config {
    CONFIGS.insert(Mutex::new(config))
}

/// Runs `f` on the configuration behind a handle.
fn change(
    config: *mut vmta_config,
    f: impl FnOnce(&mut EngineConfig) -> Result<(), vmta_result>,
) -> Result<(), vmta_result> {
    let c: Arc<Mutex<EngineConfig>> = CONFIGS.get(config)?;
    let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut c)
}

/// A configuration with every option at its default (one shard per CPU, spool in `./vmta-spool`,
/// durability sync, MX delivery on port 25 with opportunistic TLS).
///
/// # Safety
/// `config_out` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_new(config_out: *mut *mut vmta_config) -> vmta_result {
    guard_result(|| {
        let config_out = out(config_out)?;
        let handle = register(EngineConfig::default());
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(config_out, handle) };
        Ok(())
    })
}

/// Parses TOML text (the engine's configuration file format). On a parse error returns `VMTA_CONFIG`
/// and, when `err_out` is not NULL, a `vmta_error` naming the key.
///
/// # Safety
/// `toml` must be readable for `toml_len` bytes; `config_out` writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_from_toml(
    toml: *const u8,
    toml_len: usize,
    config_out: *mut *mut vmta_config,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let config_out = out(config_out)?;
        // SAFETY: the caller promises toml_len readable bytes.
        let toml = unsafe { text(toml, toml_len, VMTA_MAX_CONFIG_SIZE) }?;
        match EngineConfig::from_toml(toml) {
            Ok(c) => {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { write(config_out, register(c)) };
                Ok(())
            }
            Err(e) => {
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, VMTA_CONFIG, &e.key, &e.to_string()) };
                Err(VMTA_CONFIG)
            }
        }
    })
}

/// Reads and parses a TOML file (`path` is UTF-8, not NUL-terminated). Relative paths inside the file
/// (DKIM keys) start at the file's directory. `VMTA_CONFIG` with a `vmta_error` when the file cannot
/// be read or parsed.
///
/// # Safety
/// `path` must be readable for `path_len` bytes; `config_out` writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_from_file(
    path: *const u8,
    path_len: usize,
    config_out: *mut *mut vmta_config,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let config_out = out(config_out)?;
        // SAFETY: the caller promises path_len readable bytes.
        let path = unsafe { text(path, path_len, VMTA_MAX_CONFIG_SIZE) }?;
        if path.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        match EngineConfig::from_file(path) {
            Ok(c) => {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { write(config_out, register(c)) };
                Ok(())
            }
            Err(e) => {
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, VMTA_CONFIG, &e.key, &e.to_string()) };
                Err(VMTA_CONFIG)
            }
        }
    })
}

/// Frees a configuration (an engine started from it keeps its own copy). `vmta_config_free(NULL)` does
/// nothing and returns `VMTA_OK`; freeing twice returns `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_free(config: *mut vmta_config) -> vmta_result {
    if config.is_null() {
        return VMTA_OK;
    }
    guard_result(|| CONFIGS.remove(config).map(drop))
}

/// `[engine] shards`: shard threads, 0 for one per CPU (at most 256, checked at start).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_shards(config: *mut vmta_config, shards: u32) -> vmta_result {
    guard_result(|| {
        change(config, |c| {
            c.engine.shards = shards as usize;
            Ok(())
        })
    })
}

/// `[engine] pin_shards`: pin shard i to CPU i modulo the CPU count.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_pin_shards(config: *mut vmta_config, pin: bool) -> vmta_result {
    guard_result(|| {
        change(config, |c| {
            c.engine.pin_shards = pin;
            Ok(())
        })
    })
}

/// `[engine] spool_dir`: the spool directory (UTF-8, not empty).
///
/// # Safety
/// `dir` must be readable for `dir_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_set_spool_dir(
    config: *mut vmta_config,
    dir: *const u8,
    dir_len: usize,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises dir_len readable bytes.
        let dir = unsafe { text(dir, dir_len, VMTA_MAX_CONFIG_SIZE) }?;
        if dir.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.engine.spool_dir = dir.into();
            Ok(())
        })
    })
}

/// `[engine] spool_segment_mb`: the size of a new spool segment file in MiB, pre-allocated
/// (1 to 4096; default 64).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_spool_segment_mb(
    config: *mut vmta_config,
    megabytes: u32,
) -> vmta_result {
    guard_result(|| {
        if !(1..=4096).contains(&megabytes) {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.engine.spool_segment_mb = megabytes;
            Ok(())
        })
    })
}

/// `[engine] durability`: one of `VMTA_DURABILITY_*`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_durability(
    config: *mut vmta_config,
    durability: u32,
) -> vmta_result {
    guard_result(|| {
        let d = match durability {
            VMTA_DURABILITY_SYNC => Durability::Sync,
            VMTA_DURABILITY_INTERVAL => Durability::Interval,
            VMTA_DURABILITY_NONE => Durability::None,
            _ => return Err(VMTA_INVALID_ARGUMENT),
        };
        change(config, |c| {
            c.engine.durability = d;
            Ok(())
        })
    })
}

/// `[engine] submission_queue`: the bounded submission ring of each shard (at least 1); a full ring
/// makes `vmta_engine_submit` return `VMTA_BUSY`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_submission_queue(
    config: *mut vmta_config,
    capacity: u32,
) -> vmta_result {
    guard_result(|| {
        if capacity == 0 {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.engine.submission_queue = capacity as usize;
            Ok(())
        })
    })
}

/// `[engine] helo_name`: the EHLO name of sources that have none.
///
/// # Safety
/// `name` must be readable for `name_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_set_helo_name(
    config: *mut vmta_config,
    name: *const u8,
    name_len: usize,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises name_len readable bytes.
        let name = unsafe { text(name, name_len, 255) }?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.engine.helo_name = name.into();
            Ok(())
        })
    })
}

/// `[engine] event_log`: a JSON-lines file every event is appended to; an empty path turns it off.
///
/// # Safety
/// `path` must be readable for `path_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_set_event_log(
    config: *mut vmta_config,
    path: *const u8,
    path_len: usize,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises path_len readable bytes.
        let path = unsafe { text(path, path_len, VMTA_MAX_CONFIG_SIZE) }?;
        change(config, |c| {
            c.engine.event_log = path.into();
            Ok(())
        })
    })
}

/// `[dns] nameservers`: adds a nameserver (`ip`, `ip:port` or `[ipv6]:port`). With none, the engine
/// reads /etc/resolv.conf.
///
/// # Safety
/// `nameserver` must be readable for `nameserver_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_add_nameserver(
    config: *mut vmta_config,
    nameserver: *const u8,
    nameserver_len: usize,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises nameserver_len readable bytes.
        let ns = unsafe { text(nameserver, nameserver_len, 256) }?;
        vmta::dns::parse_nameserver(ns).map_err(|_| VMTA_INVALID_ARGUMENT)?;
        change(config, |c| {
            c.dns.nameservers.push(ns.to_string());
            Ok(())
        })
    })
}

/// `[delivery] port`: the destination SMTP port (not 0).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_port(config: *mut vmta_config, port: u16) -> vmta_result {
    guard_result(|| {
        if port == 0 {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.delivery.port = port;
            Ok(())
        })
    })
}

/// `[delivery] tls`: one of `VMTA_TLS_*`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_tls(config: *mut vmta_config, tls: u32) -> vmta_result {
    guard_result(|| {
        let tls = tls_policy(tls)?;
        change(config, |c| {
            c.delivery.tls = tls;
            Ok(())
        })
    })
}

/// `[delivery] max_connections_per_host` (at least 1).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_max_connections_per_host(
    config: *mut vmta_config,
    connections: u32,
) -> vmta_result {
    guard_result(|| {
        if connections == 0 {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.delivery.max_connections_per_host = connections as usize;
            Ok(())
        })
    })
}

/// `[retry]`: the exponential schedule: first retry after `first_s`, doubling up to `max_s`, until the
/// message is `max_age_s` old (then it expires). Needs `0 < first_s <= max_s`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_retry(
    config: *mut vmta_config,
    first_s: u64,
    max_s: u64,
    max_age_s: u64,
) -> vmta_result {
    guard_result(|| {
        if first_s == 0 || max_s < first_s {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.retry.policy = vmta::engine::config::RetryKind::Exponential;
            c.retry.first_s = first_s;
            c.retry.max_s = max_s;
            c.retry.max_age_s = max_age_s;
            Ok(())
        })
    })
}

/// `[shaping] rules`: an inline TOML rule set (empty: the shipped provider defaults). Checked at start.
///
/// # Safety
/// `rules` must be readable for `rules_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_set_shaping_rules(
    config: *mut vmta_config,
    rules: *const u8,
    rules_len: usize,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises rules_len readable bytes.
        let rules = unsafe { text(rules, rules_len, VMTA_MAX_CONFIG_SIZE) }?;
        change(config, |c| {
            c.shaping.rules = rules.into();
            Ok(())
        })
    })
}

/// `[smarthost]`: relay all mail through `address` (`host:port`) with TLS policy `tls`
/// (`VMTA_TLS_*`), without AUTH. An empty address removes the smarthost.
///
/// # Safety
/// `address` must be readable for `address_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_set_smarthost(
    config: *mut vmta_config,
    address: *const u8,
    address_len: usize,
    tls: u32,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises address_len readable bytes.
        let address = unsafe { text(address, address_len, 1024) }?;
        let tls = tls_policy(tls)?;
        if !address.is_empty() && !address.contains(':') {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.smarthost = (!address.is_empty()).then(|| SmarthostConfig {
                address: address.into(),
                domains: Vec::new(),
                username: String::new(),
                password: String::new(),
                tls,
                allow_plaintext_auth: false,
            });
            Ok(())
        })
    })
}

/// `[suppression] enabled`: check each recipient against the tenant's suppression list at
/// submission and feed the list with bounces and reports (on by default; the list is
/// `suppression.log` in the spool directory).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_config_set_suppression(
    config: *mut vmta_config,
    enabled: bool,
) -> vmta_result {
    guard_result(|| {
        change(config, |c| {
            c.suppression.enabled = enabled;
            Ok(())
        })
    })
}

/// `[verp]`: send each recipient with a signed VERP return path `prefix+...@domain` (HMAC key `key`,
/// at least 16 bytes), so `vmta_engine_apply_report` can match reports to their message and
/// recipient and refuse forged ones. An empty prefix removes VERP. Checked at engine start.
///
/// # Safety
/// Inputs readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_config_set_verp(
    config: *mut vmta_config,
    prefix: *const u8,
    prefix_len: usize,
    domain: *const u8,
    domain_len: usize,
    key: *const u8,
    key_len: usize,
) -> vmta_result {
    guard_result(|| {
        // SAFETY: the caller promises the lengths.
        let (prefix, domain, key) = unsafe {
            (
                text(prefix, prefix_len, 1024)?,
                text(domain, domain_len, 1024)?,
                text(key, key_len, 1024)?,
            )
        };
        if !prefix.is_empty() && (domain.is_empty() || key.len() < 16) {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        change(config, |c| {
            c.verp = (!prefix.is_empty()).then(|| vmta::engine::config::VerpSection {
                prefix: prefix.into(),
                domain: domain.into(),
                keys: vec![key.into()],
                trust_unsigned: false,
            });
            Ok(())
        })
    })
}

/// A copy of the configuration behind a handle.
pub(crate) fn snapshot(config: *const vmta_config) -> Result<EngineConfig, vmta_result> {
    let c = CONFIGS.get(config)?;
    let c = c.lock().unwrap_or_else(|e| e.into_inner());
    Ok(c.clone())
}
