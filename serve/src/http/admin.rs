//! The operator endpoints: the suppression list (list paged and filtered by tenant and reason, add
//! one address, remove one), the queue by destination and tenant, one destination's live state and
//! why it is slow, pausing and resuming a destination or a tenant, and bouncing the queued mail of a
//! destination, tenant or campaign. A tenant token sees and changes its own tenant's suppression
//! list only; everything else needs an admin token.
//!
//! These run on tokio's blocking threads: the engine answers them from its shard threads
//! (`Engine::queues`, `destination`, `pause_destination`, `pause_tenant`, `bounce_queued`) or from
//! the suppression log (`suppressions`, `suppress`, `unsuppress`: a change is on disk, per
//! `[suppression] sync`, and in force for submissions when the answer is sent).

use super::{Api, Caller, error, json};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use vmta::bounce::{Reason, Suppression};
use vmta::engine::SuppressionError;

/// The most entries one page holds.
pub const MAX_PAGE: usize = 1000;

/// Answers an operator request (the route's `{name}` segment in `param`).
pub fn answer(
    api: &Api,
    caller: &Caller,
    route: &str,
    method: &Method,
    param: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Response<Full<Bytes>> {
    let e = &api.engine;
    match (route, method.as_str()) {
        ("/api/v1/suppressions", "GET") => list_suppressions(api, caller, query),
        ("/api/v1/suppressions", "DELETE") => remove_suppression(api, caller, query),
        ("/api/v1/suppressions", _) => add_suppression(api, caller, body),
        ("/api/v1/queues", _) => queues(api, query),
        ("/api/v1/destinations/{domain}", _) => match e.destination(param) {
            Some(d) => json(
                StatusCode::OK,
                &serde_json::to_value(&d).unwrap_or_default(),
            ),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the engine is shutting down",
            ),
        },
        ("/api/v1/destinations/{domain}/pause", _) => {
            paused(param, e.pause_destination(param, true), true, e.paused())
        }
        ("/api/v1/destinations/{domain}/resume", _) => {
            paused(param, e.pause_destination(param, false), false, e.paused())
        }
        ("/api/v1/tenants/{tenant}/pause", _) => {
            paused(param, e.pause_tenant(param, true), true, e.paused())
        }
        ("/api/v1/tenants/{tenant}/resume", _) => {
            paused(param, e.pause_tenant(param, false), false, e.paused())
        }
        ("/api/v1/bounce", _) => bounce(api, body),
        ("/api/v1/reload", _) => match &api.reloader {
            None => error(
                StatusCode::NOT_FOUND,
                None,
                "no configuration file to reload",
            ),
            Some(r) => match r.reload() {
                Ok(v) => json(StatusCode::OK, &v),
                Err(v) => {
                    let message = v["error"].as_str().unwrap_or("refused").to_string();
                    error(StatusCode::BAD_REQUEST, None, &message)
                }
            },
        },
        _ => error(StatusCode::NOT_FOUND, None, "no such endpoint"),
    }
}

fn paused(
    name: &str,
    changed: bool,
    paused: bool,
    (domains, tenants): (Vec<String>, Vec<String>),
) -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "name": name,
            "paused": paused,
            "changed": changed,
            "paused_destinations": domains,
            "paused_tenants": tenants,
        }),
    )
}

/// `GET /api/v1/queues?limit=`: the busiest destinations and tenants first.
fn queues(api: &Api, q: &[(String, String)]) -> Response<Full<Bytes>> {
    let limit = match param(q, "limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(l)) if (1..=MAX_PAGE).contains(&l) => l,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                Some("limit"),
                &format!("must be 1 to {MAX_PAGE}"),
            );
        }
    };
    let report = api.engine.queues();
    let now = now();
    let rows = |map: &std::collections::BTreeMap<String, vmta::engine::queues::QueueCounts>,
                key: &str| {
        let mut v: Vec<_> = map.iter().collect();
        v.sort_by(|a, b| b.1.recipients.cmp(&a.1.recipients).then(a.0.cmp(b.0)));
        let total = v.len();
        let rows: Vec<serde_json::Value> = v
            .into_iter()
            .take(limit)
            .map(|(name, c)| {
                let mut row = counts(c, now);
                row[key] = serde_json::json!(name);
                row
            })
            .collect();
        (total, rows)
    };
    let (domain_count, domains) = rows(&report.domains, "domain");
    let (tenant_count, tenants) = rows(&report.tenants, "tenant");
    let (paused_domains, paused_tenants) = api.engine.paused();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "total": counts(&report.total, now),
            "destination_count": domain_count,
            "destinations": domains,
            "tenant_count": tenant_count,
            "tenants": tenants,
            "paused_destinations": paused_domains,
            "paused_tenants": paused_tenants,
        }),
    )
}

fn counts(c: &vmta::engine::queues::QueueCounts, now: u64) -> serde_json::Value {
    serde_json::json!({
        "recipients": c.recipients,
        "ready": c.ready,
        "deferred": c.deferred,
        "held": c.held,
        "in_flight": c.in_flight,
        "oldest_age_s": c.oldest_submitted.map(|t| now.saturating_sub(t)),
        "next_retry": c.next_retry,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BounceJson {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    campaign: Option<String>,
    reason: String,
}

/// `POST /api/v1/bounce` with `{"domain" | "tenant" | "campaign", "reason"}`.
fn bounce(api: &Api, body: &[u8]) -> Response<Full<Bytes>> {
    use vmta::engine::queues::Selector;
    let b: BounceJson = match parse_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let which = match (b.domain, b.tenant, b.campaign) {
        (Some(d), None, None) => Selector::Domain(d),
        (None, Some(t), None) => Selector::Tenant(t),
        (None, None, Some(c)) => Selector::Campaign(c),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                Some("domain"),
                "name exactly one of domain, tenant or campaign",
            );
        }
    };
    if matches!(&which, Selector::Domain(x) | Selector::Tenant(x) | Selector::Campaign(x) if x.is_empty())
    {
        return error(StatusCode::BAD_REQUEST, Some("domain"), "must not be empty");
    }
    if b.reason.trim().is_empty() || b.reason.contains(['\r', '\n']) {
        return error(
            StatusCode::BAD_REQUEST,
            Some("reason"),
            "a reason on one line is needed (it goes into each cancelled event)",
        );
    }
    let r = api.engine.bounce_queued(&which, &b.reason);
    json(
        StatusCode::OK,
        &serde_json::json!({"cancelled": r.cancelled, "in_flight": r.in_flight}),
    )
}

/// A JSON body, or the answer naming the field at fault.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response<Full<Bytes>>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        error(
            StatusCode::BAD_REQUEST,
            (path != ".").then_some(path.as_str()),
            &e.into_inner().to_string(),
        )
    })
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The tenant a request acts for: a tenant token's own (naming another is refused), or what an
/// admin names (`None`: every tenant, where that means something).
fn tenant_for(
    caller: &Caller,
    named: Option<&str>,
) -> Result<Option<String>, Response<Full<Bytes>>> {
    match (&caller.tenant, named) {
        (None, n) => Ok(n.map(str::to_string)),
        (Some(own), None) => Ok(Some(own.clone())),
        (Some(own), Some(n)) if own == n => Ok(Some(own.clone())),
        (Some(own), Some(n)) => Err(error(
            StatusCode::FORBIDDEN,
            Some("tenant"),
            &format!("this token acts for tenant `{own}` only, not `{n}`"),
        )),
    }
}

fn suppression_error(e: SuppressionError) -> Response<Full<Bytes>> {
    match e {
        SuppressionError::Disabled => error(
            StatusCode::CONFLICT,
            None,
            "the suppression list is disabled ([suppression] enabled = false)",
        ),
        SuppressionError::Invalid(why) => error(StatusCode::BAD_REQUEST, Some("address"), &why),
        SuppressionError::Io(why) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, None, &why);
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, 30u64.into());
            r
        }
    }
}

/// A reason in the classifier's words, or the answer refusing it.
fn reason(r: &str) -> Result<Reason, Response<Full<Bytes>>> {
    Reason::parse(r).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            Some("reason"),
            &format!("unknown reason `{r}`"),
        )
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /api/v1/suppressions?tenant=&reason=&offset=&limit=`.
fn list_suppressions(api: &Api, caller: &Caller, q: &[(String, String)]) -> Response<Full<Bytes>> {
    let tenant = match tenant_for(caller, param(q, "tenant")) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let reason = match param(q, "reason").map(reason).transpose() {
        Ok(r) => r,
        Err(r) => return r,
    };
    let number = |name: &str, default: usize| -> Result<usize, Response<Full<Bytes>>> {
        match param(q, name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    Some(name),
                    "not a non-negative integer",
                )
            }),
        }
    };
    let (offset, limit) = match (number("offset", 0), number("limit", 100)) {
        (Ok(o), Ok(l)) => (o, l),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            Some("limit"),
            &format!("must be 1 to {MAX_PAGE}"),
        );
    }
    let all = match api.engine.suppressions(tenant.as_deref()) {
        Ok(a) => a,
        Err(e) => return suppression_error(e),
    };
    let now = now();
    let matching: Vec<&Suppression> = all
        .iter()
        .filter(|s| reason.is_none_or(|r| s.reason == r))
        .collect();
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|s| s.to_json(now))
        .collect();
    let next = (offset + page.len() < matching.len()).then_some(offset + page.len());
    json(
        StatusCode::OK,
        &serde_json::json!({
            "total": matching.len(),
            "offset": offset,
            "next_offset": next,
            "suppressions": page,
        }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddJson {
    #[serde(default)]
    tenant: Option<String>,
    address: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expires: Option<u64>,
}

/// `POST /api/v1/suppressions` with `{"address", "tenant"?, "stream"?, "reason"?, "expires"?}`.
fn add_suppression(api: &Api, caller: &Caller, body: &[u8]) -> Response<Full<Bytes>> {
    let add: AddJson = match parse_json(body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let tenant = match tenant_for(caller, add.tenant.as_deref()) {
        Ok(t) => t.unwrap_or_else(|| api.config.tenant.clone()),
        Err(r) => return r,
    };
    let reason = match add.reason.as_deref().map(reason).transpose() {
        Ok(r) => r.unwrap_or(Reason::Suppressed),
        Err(r) => return r,
    };
    match api.engine.suppress(
        &tenant,
        &add.address,
        add.stream.as_deref(),
        reason,
        add.expires,
    ) {
        Ok(s) => json(StatusCode::CREATED, &s.to_json(now())),
        Err(e) => suppression_error(e),
    }
}

/// `DELETE /api/v1/suppressions?tenant=&address=&stream=`.
fn remove_suppression(api: &Api, caller: &Caller, q: &[(String, String)]) -> Response<Full<Bytes>> {
    let tenant = match tenant_for(caller, param(q, "tenant")) {
        Ok(t) => t.unwrap_or_else(|| api.config.tenant.clone()),
        Err(r) => return r,
    };
    let Some(address) = param(q, "address") else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("address"),
            "the address to remove is missing",
        );
    };
    match api.engine.unsuppress(&tenant, address, param(q, "stream")) {
        Ok(true) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            Some("address"),
            &format!("`{address}` is not suppressed for tenant `{tenant}`"),
        ),
        Err(e) => suppression_error(e),
    }
}
