//! Tenants (brands): who may send what through vmta.
//!
//! A tenant has approved sender domains and addresses, a source pool name, DKIM keys per sending
//! domain and selector, an unsubscribe template and a Feedback-ID sender id. Tenants come from
//! configuration ([`PolicyConfig`], TOML) and change at run time through [`TenantRegistry`]: a
//! read-mostly table behind a `RwLock` holding `Arc<Tenant>`s, so a submission clones one `Arc` and
//! an update swaps whole entries (or the whole table) without disturbing submissions in flight.
//!
//! Lock state lives beside the table: locking a tenant refuses its new submissions with
//! `account locked` and, through [`TenantRegistry::is_locked`], tells the engine to hold (not send,
//! not drop) what it already queued. A tenant the registry does not know counts as locked there, so
//! mail queued for a tenant that was removed is held rather than sent without a policy.
//!
//! Address matching is case-insensitive for the whole address (RFC 5321 §2.4 lets local parts be
//! case-sensitive, but no sender relies on that for approval). A domain entry `*.example.com` approves
//! every subdomain of example.com (not example.com itself).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::address::domain_of;
use super::headers::{HeaderError, UnsubscribeTemplate};
use crate::dkim::{
    Algorithm, Canonicalization, KeyError, SignError, Signer, SignerConfig, SigningKey,
};

/// The policy section of vmta's configuration: `[[tenant]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The tenants.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
}

impl PolicyConfig {
    /// Parses the TOML text.
    pub fn from_toml(text: &str) -> Result<PolicyConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))
    }
}

/// One tenant as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name, as the host program names it on submission.
    pub name: String,
    /// The source pool (IP addresses) its mail leaves from.
    pub pool: String,
    /// Approved sender domains; `*.example.com` approves the subdomains.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Approved sender addresses, beyond the domains.
    #[serde(default)]
    pub sender_addresses: Vec<String>,
    /// DKIM keys, one per signing domain and selector.
    #[serde(default)]
    pub dkim: Vec<DkimKeyConfig>,
    /// The List-Unsubscribe template.
    #[serde(default)]
    pub unsubscribe: Option<UnsubscribeTemplate>,
    /// The sender id, last part of Feedback-ID.
    #[serde(default)]
    pub feedback_sender_id: Option<String>,
    /// Start locked.
    #[serde(default)]
    pub locked: bool,
}

/// A DKIM key of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// A PEM file, relative to the configuration file's directory.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The PEM text itself (instead of `key_file`).
    #[serde(default)]
    pub key_pem: Option<String>,
    /// `rsa-sha256` or `ed25519-sha256`; checked against the key when given.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `relaxed/relaxed` (default), `simple/simple`, `relaxed/simple` or `simple/relaxed`.
    #[serde(default)]
    pub canonicalization: Option<String>,
    /// Header fields to sign instead of the default list.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// Oversign the default set of fields (RFC 6376 §8.15).
    #[serde(default)]
    pub oversign: bool,
    /// Signature lifetime in seconds (`x=`).
    #[serde(default)]
    pub expire_after: Option<u64>,
}

/// A configuration that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The TOML text does not parse or does not fit the schema.
    Toml(String),
    /// Two tenants share a name.
    DuplicateTenant(String),
    /// A tenant has no name or no pool, or a sender entry is malformed.
    Invalid {
        /// The tenant.
        tenant: String,
        /// What is wrong.
        why: String,
    },
    /// A DKIM key cannot be read or used.
    Key {
        /// The tenant.
        tenant: String,
        /// The signing domain.
        domain: String,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Toml(e) => write!(f, "policy configuration: {e}"),
            ConfigError::DuplicateTenant(t) => write!(f, "tenant {t:?} is configured twice"),
            ConfigError::Invalid { tenant, why } => write!(f, "tenant {tenant:?}: {why}"),
            ConfigError::Key {
                tenant,
                domain,
                why,
            } => write!(f, "tenant {tenant:?}, DKIM key for {domain}: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A tenant ready for use: normalised sender lists and loaded DKIM signers.
#[derive(Debug, Clone)]
pub struct Tenant {
    name: String,
    pool: String,
    domains: HashSet<String>,
    wildcard_domains: Vec<String>,
    addresses: HashSet<String>,
    signers: Vec<Signer>,
    unsubscribe: Option<UnsubscribeTemplate>,
    feedback_sender_id: Option<String>,
}

fn key_error(tenant: &str, domain: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError::Key {
        tenant: tenant.to_string(),
        domain: domain.to_string(),
        why: why.to_string(),
    }
}

impl Tenant {
    /// Builds a tenant from its configuration, reading key files relative to `base_dir`.
    pub fn from_config(config: &TenantConfig, base_dir: &Path) -> Result<Tenant, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid {
            tenant: config.name.clone(),
            why,
        };
        if config.name.trim().is_empty() {
            return Err(invalid("empty tenant name".into()));
        }
        if config.pool.trim().is_empty() {
            return Err(invalid("empty pool name".into()));
        }
        let mut domains = HashSet::new();
        let mut wildcard_domains = Vec::new();
        for d in &config.sender_domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                return Err(invalid(format!("bad sender domain {d:?}")));
            }
            match d.strip_prefix("*.") {
                Some(parent) if !parent.is_empty() && !parent.contains('*') => {
                    wildcard_domains.push(format!(".{parent}"))
                }
                _ if d.contains('*') => return Err(invalid(format!("bad sender domain {d:?}"))),
                _ => {
                    domains.insert(d);
                }
            }
        }
        let mut addresses = HashSet::new();
        for a in &config.sender_addresses {
            let a = a.trim().to_ascii_lowercase();
            if domain_of(&a).is_none() || a.starts_with('@') {
                return Err(invalid(format!("bad sender address {a:?}")));
            }
            addresses.insert(a);
        }
        let mut signers = Vec::new();
        for k in &config.dkim {
            signers.push(load_signer(&config.name, k, base_dir)?);
        }
        if let Some(u) = &config.unsubscribe {
            u.validate()
                .map_err(|e: HeaderError| invalid(format!("unsubscribe: {e}")))?;
            // RFC 8058 §4: one-click only counts when a DKIM signature covers both fields.
            if u.one_click {
                for s in &signers {
                    let covers = |name: &str| {
                        s.config()
                            .headers
                            .iter()
                            .any(|h| h.eq_ignore_ascii_case(name))
                    };
                    if !covers("List-Unsubscribe") || !covers("List-Unsubscribe-Post") {
                        return Err(invalid(format!(
                            "one-click unsubscribe needs List-Unsubscribe and List-Unsubscribe-Post \
                             in the signed header list of the {} key (RFC 8058 §4)",
                            s.config().domain
                        )));
                    }
                }
            }
        }
        if let Some(id) = &config.feedback_sender_id {
            super::headers::feedback_id(None, None, None, id)
                .map_err(|e| invalid(format!("feedback_sender_id: {e}")))?;
        }
        Ok(Tenant {
            name: config.name.clone(),
            pool: config.pool.clone(),
            domains,
            wildcard_domains,
            addresses,
            signers,
            unsubscribe: config.unsubscribe.clone(),
            feedback_sender_id: config.feedback_sender_id.clone(),
        })
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source pool.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The unsubscribe template.
    pub fn unsubscribe(&self) -> Option<&UnsubscribeTemplate> {
        self.unsubscribe.as_ref()
    }

    /// The Feedback-ID sender id.
    pub fn feedback_sender_id(&self) -> Option<&str> {
        self.feedback_sender_id.as_deref()
    }

    /// The List-Unsubscribe fields for one recipient of a message, from the tenant's template.
    pub fn unsubscribe_fields(
        &self,
        recipient: &str,
        message_id: &str,
    ) -> Option<super::headers::UnsubscribeFields> {
        self.unsubscribe
            .as_ref()
            .map(|t| t.render(&self.name, recipient, message_id))
    }

    /// The Feedback-ID field `campaign:tenant:mail_type:sender_id` (Gmail's feedback loop), when the
    /// tenant has a sender id.
    pub fn feedback_id(
        &self,
        campaign: Option<&str>,
        mail_type: Option<&str>,
    ) -> Option<Result<String, HeaderError>> {
        self.feedback_sender_id
            .as_deref()
            .map(|id| super::headers::feedback_id(campaign, Some(&self.name), mail_type, id))
    }

    /// The DKIM signers.
    pub fn signers(&self) -> &[Signer] {
        &self.signers
    }

    /// Whether `address` may appear as envelope sender or in From for this tenant.
    pub fn is_approved(&self, address: &str) -> bool {
        let lower = address.trim().to_ascii_lowercase();
        if self.addresses.contains(&lower) {
            return true;
        }
        let Some(domain) = domain_of(&lower) else {
            return false;
        };
        self.domains.contains(&domain) || self.wildcard_domains.iter().any(|w| domain.ends_with(w))
    }

    /// The signer for mail from `domain`: one whose `d=` is the domain, else the one whose `d=` is
    /// the closest parent of it (still aligned under relaxed DMARC alignment).
    pub fn signer_for(&self, domain: &str) -> Option<&Signer> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.signers
            .iter()
            .filter(|s| {
                let d = &s.config().domain;
                domain == *d || domain.ends_with(&format!(".{d}"))
            })
            .max_by_key(|s| s.config().domain.len())
    }

    /// Every signer for mail from `domain` with the `d=` [`Self::signer_for`] picks: a tenant with an
    /// RSA and an Ed25519 key for one domain signs twice (RFC 8463 §4 recommends it while receivers
    /// that know only RSA remain). Apply them in order, each on the output of the one before.
    pub fn signers_for(&self, domain: &str) -> Vec<&Signer> {
        let Some(best) = self.signer_for(domain) else {
            return Vec::new();
        };
        let d = &best.config().domain;
        self.signers
            .iter()
            .filter(|s| s.config().domain == *d)
            .collect()
    }
}

/// Whether an envelope address needs SMTPUTF8 (RFC 6531): it holds a non-ASCII character.
pub fn address_needs_smtputf8(address: &str) -> bool {
    !address.is_ascii()
}

fn load_signer(tenant: &str, k: &DkimKeyConfig, base_dir: &Path) -> Result<Signer, ConfigError> {
    let pem = match (&k.key_pem, &k.key_file) {
        (Some(pem), None) => pem.clone(),
        (None, Some(file)) => {
            let path = base_dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| key_error(tenant, &k.domain, format!("{}: {e}", path.display())))?
        }
        _ => {
            return Err(key_error(
                tenant,
                &k.domain,
                "give exactly one of key_file and key_pem",
            ));
        }
    };
    let key = SigningKey::from_pem(&pem).map_err(|e: KeyError| key_error(tenant, &k.domain, e))?;
    if let Some(a) = &k.algorithm {
        let wanted = Algorithm::parse(a)
            .ok_or_else(|| key_error(tenant, &k.domain, format!("unknown algorithm {a:?}")))?;
        key.expect_algorithm(wanted)
            .map_err(|e| key_error(tenant, &k.domain, e))?;
    }
    let mut config = SignerConfig::new(&k.domain, &k.selector);
    if let Some(c) = &k.canonicalization {
        let (h, b) = c.split_once('/').unwrap_or((c.as_str(), "simple"));
        match (Canonicalization::parse(h), Canonicalization::parse(b)) {
            (Some(h), Some(b)) => config = config.with_canonicalization(h, b),
            _ => {
                return Err(key_error(
                    tenant,
                    &k.domain,
                    format!("unknown canonicalization {c:?}"),
                ));
            }
        }
    }
    if let Some(h) = &k.headers {
        config.headers = h.clone();
    }
    if k.oversign {
        config = config.with_oversigning();
    }
    config.expire_after = k.expire_after;
    Signer::new(key, config).map_err(|e: SignError| key_error(tenant, &k.domain, e))
}

/// Why a submission was refused before anything was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No tenant of that name: vmta sends only for tenants it knows (never an open relay).
    UnknownTenant(String),
    /// The tenant is locked.
    AccountLocked(String),
    /// The envelope sender or a From address is not approved for the tenant.
    SenderNotApproved {
        /// The tenant.
        tenant: String,
        /// Which address: `envelope sender` or `From`.
        field: &'static str,
        /// The address.
        address: String,
    },
    /// The message is invalid.
    InvalidMessage(super::message::MessageError),
}

impl Refusal {
    /// The short, stable name of the refusal (`unknown tenant`, `account locked`,
    /// `sender not approved`, `invalid message`).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::UnknownTenant(_) => "unknown tenant",
            Refusal::AccountLocked(_) => "account locked",
            Refusal::SenderNotApproved { .. } => "sender not approved",
            Refusal::InvalidMessage(_) => "invalid message",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownTenant(t) => write!(f, "unknown tenant: {t:?}"),
            Refusal::AccountLocked(t) => write!(f, "account locked: tenant {t:?}"),
            Refusal::SenderNotApproved {
                tenant,
                field,
                address,
            } => write!(
                f,
                "sender not approved: {field} <{address}> for tenant {tenant:?}"
            ),
            Refusal::InvalidMessage(e) => write!(f, "invalid message: {e}"),
        }
    }
}

impl std::error::Error for Refusal {}

#[derive(Debug, Default)]
struct Table {
    tenants: HashMap<String, Arc<Tenant>>,
    locked: HashSet<String>,
}

/// The tenants known at this moment, shared by every thread. Reads take a read lock for the time of
/// one hash lookup and an `Arc` clone.
#[derive(Debug, Default)]
pub struct TenantRegistry {
    table: RwLock<Table>,
}

impl TenantRegistry {
    /// An empty registry: every submission is refused as `unknown tenant`.
    pub fn new() -> TenantRegistry {
        TenantRegistry::default()
    }

    /// Loads a configuration (key files relative to `base_dir`).
    pub fn from_config(
        config: &PolicyConfig,
        base_dir: &Path,
    ) -> Result<TenantRegistry, ConfigError> {
        let r = TenantRegistry::new();
        r.replace_all(config, base_dir)?;
        Ok(r)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated (updates are single
        // assignments), so a poisoned lock is still consistent.
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every tenant at once from `config` (a reload). The configured `locked` flags replace
    /// the lock state. Nothing changes if any tenant is invalid.
    pub fn replace_all(&self, config: &PolicyConfig, base_dir: &Path) -> Result<(), ConfigError> {
        let mut table = Table::default();
        for t in &config.tenants {
            if table.tenants.contains_key(&t.name) {
                return Err(ConfigError::DuplicateTenant(t.name.clone()));
            }
            let tenant = Tenant::from_config(t, base_dir)?;
            if t.locked {
                table.locked.insert(t.name.clone());
            }
            table.tenants.insert(t.name.clone(), Arc::new(tenant));
        }
        *self.write() = table;
        Ok(())
    }

    /// Adds or replaces one tenant; its lock state is kept.
    pub fn upsert(&self, tenant: Tenant) {
        self.write()
            .tenants
            .insert(tenant.name.clone(), Arc::new(tenant));
    }

    /// Removes a tenant; its queued mail is then held ([`Self::is_locked`] is true for it).
    pub fn remove(&self, name: &str) -> Option<Arc<Tenant>> {
        let mut t = self.write();
        t.locked.remove(name);
        t.tenants.remove(name)
    }

    /// The tenant called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.read().tenants.get(name).cloned()
    }

    /// The names of all tenants, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().tenants.keys().cloned().collect();
        v.sort();
        v
    }

    /// Locks a tenant: new submissions are refused, queued mail is held.
    pub fn lock(&self, name: &str) -> Result<(), Refusal> {
        let mut t = self.write();
        if !t.tenants.contains_key(name) {
            return Err(Refusal::UnknownTenant(name.to_string()));
        }
        t.locked.insert(name.to_string());
        Ok(())
    }

    /// Unlocks a tenant: held mail may go again.
    pub fn unlock(&self, name: &str) -> Result<(), Refusal> {
        let mut t = self.write();
        if !t.tenants.contains_key(name) {
            return Err(Refusal::UnknownTenant(name.to_string()));
        }
        t.locked.remove(name);
        Ok(())
    }

    /// Whether the engine must hold the tenant's queued mail: true for a locked tenant and for a
    /// tenant the registry does not know.
    pub fn is_locked(&self, name: &str) -> bool {
        let t = self.read();
        t.locked.contains(name) || !t.tenants.contains_key(name)
    }

    /// Admits a submission by `tenant` with envelope sender `envelope_sender` and the From addresses
    /// `from`, or says why not. Checked in this order: known tenant, not locked, envelope sender
    /// approved, every From address approved. A null reverse-path (`<>`) is not approved: vmta
    /// writes its own delivery status notifications.
    pub fn admit(
        &self,
        tenant: &str,
        envelope_sender: &str,
        from: &[String],
    ) -> Result<Arc<Tenant>, Refusal> {
        let (t, locked) = {
            let table = self.read();
            let Some(t) = table.tenants.get(tenant) else {
                return Err(Refusal::UnknownTenant(tenant.to_string()));
            };
            (t.clone(), table.locked.contains(tenant))
        };
        if locked {
            return Err(Refusal::AccountLocked(tenant.to_string()));
        }
        let envelope = envelope_sender
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        if !t.is_approved(envelope) {
            return Err(Refusal::SenderNotApproved {
                tenant: tenant.to_string(),
                field: "envelope sender",
                address: envelope.to_string(),
            });
        }
        for a in from {
            if !t.is_approved(a) {
                return Err(Refusal::SenderNotApproved {
                    tenant: tenant.to_string(),
                    field: "From",
                    address: a.clone(),
                });
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
-----END PRIVATE KEY-----\n";

    fn config() -> PolicyConfig {
        PolicyConfig::from_toml(&format!(
            r#"
[[tenant]]
name = "acme"
pool = "shared"
sender_domains = ["acme.example", "*.mail.acme.example"]
sender_addresses = ["Billing@Partner.example"]
feedback_sender_id = "vmta"

[[tenant.dkim]]
domain = "acme.example"
selector = "ed"
key_pem = """{ED_PEM}"""
algorithm = "ed25519-sha256"
oversign = true

[tenant.unsubscribe]
url = "https://u.acme.example/{{token}}"
one_click = true
secret = "k"

[[tenant]]
name = "shady"
pool = "quarantine"
sender_domains = ["shady.example"]
locked = true
"#
        ))
        .unwrap()
    }

    #[test]
    fn approval() {
        let r = TenantRegistry::from_config(&config(), Path::new(".")).unwrap();
        let from = vec!["news@acme.example".to_string()];
        let t = r.admit("acme", "<bounce@acme.example>", &from).unwrap();
        assert_eq!(t.pool(), "shared");
        assert!(t.is_approved("x@eu.mail.acme.example"));
        assert!(!t.is_approved("x@mail.acme.example"));
        assert!(t.is_approved("billing@partner.example"));
        assert!(!t.is_approved("sales@partner.example"));
        assert!(!t.is_approved("x@acme.example.evil"));
        assert!(!t.is_approved("x@notacme.example"));
        assert_eq!(
            r.admit("acme", "x@evil.example", &from).unwrap_err().kind(),
            "sender not approved"
        );
        let e = r
            .admit("acme", "bounce@acme.example", &["ceo@evil.example".into()])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "sender not approved: From <ceo@evil.example> for tenant \"acme\""
        );
        assert_eq!(
            r.admit("acme", "<>", &from).unwrap_err().kind(),
            "sender not approved"
        );
        assert_eq!(
            r.admit("nobody", "a@acme.example", &from)
                .unwrap_err()
                .kind(),
            "unknown tenant"
        );
        assert!(t.signer_for("acme.example").is_some());
        assert_eq!(
            t.feedback_id(Some("spring"), Some("promo"))
                .unwrap()
                .unwrap(),
            "Feedback-ID: spring:acme:promo:vmta\r\n"
        );
        let u = t
            .unsubscribe_fields("ann@example.net", "<m1@acme.example>")
            .unwrap();
        assert!(
            u.list_unsubscribe
                .starts_with("List-Unsubscribe: <https://u.acme.example/")
        );
        assert!(u.list_unsubscribe_post.is_some());
        assert!(t.signer_for("eu.mail.acme.example").is_some());
        assert!(t.signer_for("other.example").is_none());
        assert_eq!(t.signers_for("eu.mail.acme.example").len(), 1);
        assert!(t.signers_for("other.example").is_empty());
        assert!(address_needs_smtputf8("jörg@example.com"));
        assert!(!address_needs_smtputf8("jorg@example.com"));
    }

    #[test]
    fn locking() {
        let r = TenantRegistry::from_config(&config(), Path::new(".")).unwrap();
        let from = vec!["a@shady.example".to_string()];
        assert_eq!(
            r.admit("shady", "a@shady.example", &from).unwrap_err(),
            Refusal::AccountLocked("shady".into())
        );
        assert!(r.is_locked("shady"));
        r.unlock("shady").unwrap();
        assert!(!r.is_locked("shady"));
        assert!(r.admit("shady", "a@shady.example", &from).is_ok());
        r.lock("shady").unwrap();
        assert!(r.is_locked("shady"));
        // Replacing the tenant keeps its lock.
        let again = Tenant::from_config(&config().tenants[1], Path::new(".")).unwrap();
        r.upsert(again);
        assert!(r.is_locked("shady"));
        assert!(r.is_locked("never-heard-of"));
        assert!(r.lock("never-heard-of").is_err());
        r.remove("shady");
        assert!(r.is_locked("shady"));
        assert_eq!(r.names(), ["acme"]);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut c = config();
        c.tenants.push(c.tenants[0].clone());
        assert!(matches!(
            TenantRegistry::from_config(&c, Path::new(".")),
            Err(ConfigError::DuplicateTenant(_))
        ));
        let mut c = config();
        c.tenants[0].dkim[0].algorithm = Some("rsa-sha256".into());
        assert!(matches!(
            TenantRegistry::from_config(&c, Path::new(".")),
            Err(ConfigError::Key { .. })
        ));
        let mut c = config();
        c.tenants[0].sender_domains.push("a*b.example".into());
        assert!(matches!(
            TenantRegistry::from_config(&c, Path::new(".")),
            Err(ConfigError::Invalid { .. })
        ));
        let mut c = config();
        c.tenants[0].dkim[0].headers = Some(vec!["From".into(), "Subject".into()]);
        let e = TenantRegistry::from_config(&c, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("RFC 8058"), "{e}");
        let mut c = config();
        c.tenants[0].dkim[0].key_file = Some("no-such-dir/key.pem".into());
        let e = TenantRegistry::from_config(&c, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        c.tenants[0].dkim[0].key_pem = None;
        let e = TenantRegistry::from_config(&c, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("no-such-dir/key.pem"), "{e}");
        assert!(PolicyConfig::from_toml("[[tenant]]\nname = 1").is_err());
        assert!(
            PolicyConfig::from_toml("[[tenant]]\nname = \"a\"\npool = \"p\"\ncolour = 1").is_err()
        );
        // A failed reload leaves the old table in place.
        let r = TenantRegistry::from_config(&config(), Path::new(".")).unwrap();
        let mut bad = config();
        bad.tenants[0].pool = String::new();
        assert!(r.replace_all(&bad, Path::new(".")).is_err());
        assert_eq!(r.names(), ["acme", "shady"]);
    }
}
